// Everything the CPU kernels include. Each instruction-set variant (kernels_*.cpp) includes this
// first, before it switches the compiler's target: library code is then compiled for the baseline
// target only, and a variant's own functions alone use the wider instructions (the *_impl.h
// headers include nothing themselves).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "../stage_ops.h"

// x86-64 builds carry a second set of the kernels, compiled for AVX2 (kernels_avx2.cpp).
#if defined(__x86_64__) || defined(_M_X64)
#define GRADEX_HAS_AVX2_KERNELS 1
#endif

namespace gradex {
namespace cpu {

// The entry points every variant defines, in a namespace of its own (baseline, avx2).
#define GRADEX_DECLARE_CPU_KERNELS(isa)                                                       \
  namespace isa {                                                                             \
  std::tuple<at::Tensor, at::Tensor> reduce_stage(const at::Tensor& activation,               \
                                                  int64_t transform, int64_t splits,          \
                                                  int64_t chunks);                            \
  at::Tensor extrapolate_chain(const at::Tensor& heatmap, at::TensorList sums,                \
                               at::TensorList maxima, at::IntArrayRef windows,                \
                               at::IntArrayRef output_size, bool local, int64_t normalize);   \
  }

GRADEX_DECLARE_CPU_KERNELS(baseline)
GRADEX_DECLARE_CPU_KERNELS(avx2)

}  // namespace cpu
}  // namespace gradex

// The gradex ops' CPU entries (schemas and contract: csrc/gradex.cpp): argument checks, then the
// kernels compiled for the widest instruction set this CPU runs (kernels_*.cpp).
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "kernel_deps.h"

namespace gradex {
namespace cpu {
namespace {

// Chosen once per process: "avx2" where the CPU has AVX2, FMA and F16C, else "baseline";
// GRADEX_CPU_ISA=baseline forces the baseline kernels (the tests run both).
std::string choose_isa() {
  const char* forced = std::getenv("GRADEX_CPU_ISA");
  if (forced != nullptr && std::string(forced) == "baseline") return "baseline";
#ifdef GRADEX_HAS_AVX2_KERNELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return "avx2";
  }
#endif
  return "baseline";
}

const std::string& isa() {
  static const std::string chosen = choose_isa();
  return chosen;
}

#ifdef GRADEX_HAS_AVX2_KERNELS
bool use_avx2() {
  static const bool avx2 = isa() == "avx2";
  return avx2;
}
#endif

std::tuple<at::Tensor, at::Tensor> reduce_stage_cpu(const at::Tensor& activation,
                                                    int64_t transform, int64_t splits,
                                                    int64_t chunks) {
  check_reduce_stage_args(activation, transform, splits, chunks);
#ifdef GRADEX_HAS_AVX2_KERNELS
  if (use_avx2()) return avx2::reduce_stage(activation, transform, splits, chunks);
#endif
  return baseline::reduce_stage(activation, transform, splits, chunks);
}

at::Tensor extrapolate_chain_cpu(const at::Tensor& heatmap, at::TensorList sums,
                                 at::TensorList maxima, at::IntArrayRef windows,
                                 at::IntArrayRef output_size, bool local, int64_t normalize) {
  check_chain_args(heatmap, sums, maxima, windows, output_size, normalize);
#ifdef GRADEX_HAS_AVX2_KERNELS
  if (use_avx2()) {
    return avx2::extrapolate_chain(heatmap, sums, maxima, windows, output_size, local, normalize);
  }
#endif
  return baseline::extrapolate_chain(heatmap, sums, maxima, windows, output_size, local,
                                     normalize);
}

std::string cpu_isa() { return isa(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(gradex, m) { m.def("cpu_isa() -> str", &cpu_isa); }

TORCH_LIBRARY_IMPL(gradex, CPU, m) {
  m.impl("reduce_stage", &reduce_stage_cpu);
  m.impl("extrapolate_chain", &extrapolate_chain_cpu);
}

}  // namespace cpu
}  // namespace gradex

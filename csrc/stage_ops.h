// Shared by the CPU and CUDA kernels of gradex: the math of one GE stage that both must compute
// identically (DESIGN.md §1), and the argument checks every kernel entry runs.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define GRADEX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GRADEX_HOST_DEVICE inline
#endif

namespace gradex {

// The `transform` argument of gradex::reduce_stage: what makes a signed stage non-negative.
enum class Transform : int64_t { kNone = 0, kRelu = 1, kAbs = 2 };

template <Transform T>
GRADEX_HOST_DEVICE float apply_transform(float v) {
  if constexpr (T == Transform::kRelu) {
    return v < 0.f ? 0.f : v;  // keeps NaN, as torch.clamp_min does
  } else if constexpr (T == Transform::kAbs) {
    return fabsf(v);
  } else {
    return v;
  }
}

// One axis of F.interpolate(mode="bilinear", align_corners=False) with no scale factor, written
// the way ATen's upsample kernels compute it (float scale, source index clamped at 0), so that
// every backend lands on the same taps as the reference.
struct BilinearTap {
  int64_t lo, hi;
  float w_lo, w_hi;
};

GRADEX_HOST_DEVICE BilinearTap bilinear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  if (src < 0.f) src = 0.f;
  const int64_t lo = static_cast<int64_t>(src);
  const int64_t hi = lo + (lo < in_size - 1 ? 1 : 0);
  const float w_hi = src - static_cast<float>(lo);
  return {lo, hi, 1.f - w_hi, w_hi};
}

// A stage whose maximum is not positive and finite fired nowhere (or overflowed): GE zeroes the
// map there instead of dividing by it.
GRADEX_HOST_DEVICE bool stage_is_live(float sample_max) {
  return sample_max > 0.f && sample_max <= 3.402823466e38f;  // false for NaN and +Inf
}

}  // namespace gradex

#include <ATen/core/Tensor.h>

namespace gradex {
// Defined in gradex.cpp; every backend's entry point calls the one for its op first.
void check_reduce_stage_args(const at::Tensor& activation, int64_t transform);
void check_upsample_multiply_args(const at::Tensor& g, const at::Tensor& channel_sum,
                                  const at::Tensor& sample_max);
void check_normalize_maps_args(const at::Tensor& g);
}  // namespace gradex

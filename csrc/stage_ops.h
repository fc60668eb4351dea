// Shared by the CPU and CUDA kernels of gradex: the math of GE that both must compute identically
// (DESIGN.md §1; the oracle is gradex/reference.py), and the argument checks every kernel entry
// runs. Every function here is written once and compiled for the host and the device.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define GRADEX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GRADEX_HOST_DEVICE inline
#endif

namespace gradex {

// The `transform` argument of gradex::reduce_stage: what makes a signed stage non-negative.
enum class Transform : int64_t { kNone = 0, kRelu = 1, kAbs = 2 };

// The `normalize` argument of gradex::extrapolate_chain.
enum class Normalize : int64_t { kNone = 0, kMinMax = 1, kStandardize = 2 };

// gradex.reference.LOCAL_FLOOR, MIN_FLOOR and CONSTANT_RTOL (their comments say why).
constexpr float kLocalFloor = 1e-6f;
constexpr float kMinFloor = 1e-30f;
constexpr float kConstantRtol = 3.0517578125e-05f;  // 2^-15
// The largest finite float32: a magnitude above it is +Inf (NaN compares false either way).
constexpr float kFloatMax = 3.402823466e38f;

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

// The bilinear value at one output point, from the two rows its row tap reads; the order of the
// operations is ATen's, so that the result matches F.interpolate to the last bit where it can.
GRADEX_HOST_DEVICE float bilinear_at(const float* row_lo, const float* row_hi,
                                     const BilinearTap& ty, const BilinearTap& tx) {
  return ty.w_lo * (tx.w_lo * row_lo[tx.lo] + tx.w_hi * row_lo[tx.hi]) +
         ty.w_hi * (tx.w_lo * row_hi[tx.lo] + tx.w_hi * row_hi[tx.hi]);
}

// The input rows/columns [begin, end) that output cell i of F.adaptive_avg_pool2d averages.
GRADEX_HOST_DEVICE int64_t pool_begin(int64_t i, int64_t in_size, int64_t out_size) {
  return (i * in_size) / out_size;
}
GRADEX_HOST_DEVICE int64_t pool_end(int64_t i, int64_t in_size, int64_t out_size) {
  return ((i + 1) * in_size + out_size - 1) / out_size;
}

// A stage whose maximum is not positive and finite fired nowhere (or overflowed): GE zeroes the
// map there instead of dividing by it.
GRADEX_HOST_DEVICE bool stage_is_live(float sample_max) {
  return sample_max > 0.f && sample_max <= kFloatMax;  // false for NaN and +Inf
}

// The largest finite magnitude seen so far, updated with v (NaN and Inf are skipped).
GRADEX_HOST_DEVICE float finite_magnitude(float largest, float v) {
  const float m = fabsf(v);
  return m <= kFloatMax && m > largest ? m : largest;
}

// Overflow: the chain works on the heatmap and on each live stage scaled by a power of two that
// brings its largest magnitude near 1 (gradex.reference.pow2_shift says why: GE is scale-free,
// float32 is not, and a power of two changes no rounding).
GRADEX_HOST_DEVICE int pow2_shift(float magnitude) {
#ifdef __CUDA_ARCH__
  const int bits = __float_as_int(magnitude);
#else
  int bits;
  std::memcpy(&bits, &magnitude, sizeof bits);
#endif
  const int shift = 127 - ((bits >> 23) & 0xff);
  return shift < -126 ? -126 : (shift > 127 ? 127 : shift);
}

// 2^shift, exactly, for shift in [-126, 127].
GRADEX_HOST_DEVICE float pow2(int shift) {
  const int bits = (shift + 127) << 23;
#ifdef __CUDA_ARCH__
  return __int_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

// v * 2^-shift in two exact steps (2^-127 is not a normal float); the raw map gets the heatmap's
// scale back this way.
GRADEX_HOST_DEVICE float unscale(float v, int shift) {
  const int half = -shift / 2;  // truncates, as the reference's rounding_mode="trunc"
  return v * pow2(half) * pow2(-shift - half);
}

// The shift of a stage: from its M where it is live, 0 (scale 1) where it is dead.
GRADEX_HOST_DEVICE int stage_shift(float sample_max) {
  return stage_is_live(sample_max) ? pow2_shift(sample_max) : 0;
}

// Does a map spanning [lo, hi] vary by more than the rounding of the chain? False for NaN and
// infinite spans (gradex.reference.map_is_varying).
GRADEX_HOST_DEVICE bool map_is_varying(float lo, float hi) {
  const float magnitude = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
  return (hi - lo) > kConstantRtol * magnitude;
}

// The per-sample normalisation, once its statistics are known: min-max, or the paper's
// standardise-clip-min-max; all zeros for a constant (or NaN) map. Same operations, in the same
// order, as gradex.reference.minmax_maps and normalize_maps.
struct Normalizer {
  int mode;  // 0: all zeros, 1: min-max, 2: standardise
  float lo, span, mean, std, z_lo;

  GRADEX_HOST_DEVICE float operator()(float v) const {
    if (mode == 1) return (v - lo) / span;
    if (mode == 2) {
      float z = (v - mean) / std;
      z = z < -1.f ? -1.f : (z > 1.f ? 1.f : z);
      return (z - z_lo) / span;
    }
    return 0.f;
  }
};

// `squares` (Σ (v - mean)², in double) is read for standardisation only.
GRADEX_HOST_DEVICE Normalizer make_normalizer(Normalize how, float lo, float hi, bool saw_nan,
                                              int64_t n, double sum, double squares) {
  Normalizer f{0, 0.f, 1.f, 0.f, 1.f, 0.f};
  if (saw_nan || n < 2 || !map_is_varying(lo, hi)) return f;
  if (how == Normalize::kMinMax) {
    f.mode = 1;
    f.lo = lo;
    f.span = hi - lo;
    return f;
  }
  const double mean = sum / static_cast<double>(n);
  f.mean = static_cast<float>(mean);
  f.std = static_cast<float>(sqrt(squares / static_cast<double>(n - 1)));
  auto clip = [](float z) { return z < -1.f ? -1.f : (z > 1.f ? 1.f : z); };
  f.z_lo = clip((lo - f.mean) / f.std);
  const float z_hi = clip((hi - f.mean) / f.std);
  f.span = z_hi - f.z_lo;
  f.mode = f.span > 0.f ? 2 : 0;
  return f;
}

}  // namespace gradex

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

namespace gradex {
// Defined in gradex.cpp; every backend's entry point calls the one for its op first.
void check_reduce_stage_args(const at::Tensor& activation, int64_t transform, int64_t splits,
                             int64_t chunks);
void check_chain_args(const at::Tensor& heatmap, at::TensorList sums, at::TensorList maxima,
                      at::IntArrayRef windows, at::IntArrayRef output_size, int64_t normalize);
}  // namespace gradex

// CUDA kernel of gradex::extrapolate_chain (schema and contract: csrc/gradex.cpp): everything GE
// does after the stage reductions, in one launch.
//
// One block per sample walks the whole chain: per stage the window means of the 'local'
// weighting, then the step (bilinear upsample × weighted channel sum) into a scratch map; then the
// resize to the output size with the statistics, and the normalisation in place. The maps are
// C_k times smaller than the activations (a 112×112 stage is 49 KB), so they stay in L2 between
// phases; what a batch-1 explanation pays for is launches, and this is one. Phases are separated
// by __syncthreads(), which also makes one phase's global writes visible to the next.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../stage_ops.h"

namespace gradex {
namespace {

// Stages one launch carries (gradex/ops.py chains longer lists launch by launch).
constexpr int kMaxStages = 16;
constexpr int kChainThreads = 512;
constexpr int kChainWarps = kChainThreads / 32;

struct ChainStage {
  const float* sums;    // (parts, B, H, W)
  const float* maxima;  // (B, m)
  int64_t parts, m, H, W;
};

struct ChainArgs {
  const float* heatmap;  // (B, h0, w0)
  int64_t B, h0, w0;
  ChainStage stages[kMaxStages];
  int K;
  bool local;
  int normalize;
  int64_t ny, nx;  // windows of the local weighting
  int64_t Ho, Wo;
  float* out;      // (B, Ho, Wo)
  // Per sample: two maps of `largest` values (the stages write them in turn), then ny*nx window
  // means. Written and read by the same block only.
  float* scratch;
  int64_t largest;
};

// Block-wide reductions; every thread gets the result. `scratch` holds one value per warp.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();  // `scratch` may still be read by the previous call
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  T total = scratch[0];
  for (int w = 1; w < kChainWarps; ++w) total = op(total, scratch[w]);
  return total;
}

struct Min { __device__ float operator()(float a, float b) const { return fminf(a, b); } };
struct Max { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };
struct SumD { __device__ double operator()(double a, double b) const { return a + b; } };

// S at position p of sample b: the partial sums added.
__device__ __forceinline__ float channel_sum(const ChainStage& s, int64_t B, int64_t b, int64_t p) {
  const int64_t P = s.H * s.W;
  float v = s.sums[b * P + p];
  for (int64_t n = 1; n < s.parts; ++n) v += s.sums[(n * B + b) * P + p];
  return v;
}

__global__ void __launch_bounds__(kChainThreads) extrapolate_chain_kernel(ChainArgs a) {
  __shared__ ChainStage stages[kMaxStages];
  __shared__ float float_scratch[kChainWarps];
  __shared__ double double_scratch[kChainWarps];
  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  // Indexing the parameter array by a loop variable would copy it to local memory per thread.
#pragma unroll
  for (int i = 0; i < kMaxStages; ++i) {
    if (tid == i && i < a.K) stages[i] = a.stages[i];
  }
  __syncthreads();

  const int64_t b = blockIdx.x;
  float* buffers = a.scratch + b * (2 * a.largest + a.ny * a.nx);
  float* pooled = buffers + 2 * a.largest;
  float* out = a.out + b * a.Ho * a.Wo;
  const float* g = a.heatmap + b * a.h0 * a.w0;
  int64_t gh = a.h0, gw = a.w0;

  // The heatmap is read times a power of two that brings its largest finite magnitude near 1
  // (pow2_shift: overflow), applied by the first step (or the resize, with no stage).
  float largest = 0.f;
  for (int64_t i = tid; i < a.h0 * a.w0; i += kChainThreads) largest = finite_magnitude(largest, g[i]);
  const int g_shift = pow2_shift(block_reduce(largest, Max(), float_scratch));
  float g_scale = pow2(g_shift);

  for (int k = a.K - 1; k >= 0; --k) {
    const ChainStage& s = stages[k];
    const int64_t H = s.H, W = s.W, P = H * W;

    // M from its partial maxima; a NaN anywhere marks the stage dead.
    float top = 0.f;
    bool nan = false;
    for (int64_t i = tid; i < s.m; i += kChainThreads) {
      const float v = s.maxima[b * s.m + i];
      nan |= isnan(v);
      top = fmaxf(top, v);
    }
    top = block_reduce(top, Max(), float_scratch);
    nan = __syncthreads_or(nan);
    const float sample_max = nan ? __int_as_float(0x7fc00000) : top;
    const float scale = pow2(stage_shift(sample_max));  // S and M times it: overflow
    const float weight = stage_is_live(sample_max) ? (a.local ? 1.f : sample_max * scale) : 0.f;

    float floor = 0.f;
    if (a.local) {
      // One warp per window: its lanes stride over the window's cells, summing in double.
      const int64_t windows = a.ny * a.nx;
      for (int64_t w = warp; w < windows; w += kChainWarps) {
        const int64_t wy = w / a.nx, wx = w % a.nx;
        const int64_t y0 = pool_begin(wy, H, a.ny), y1 = pool_end(wy, H, a.ny);
        const int64_t x0 = pool_begin(wx, W, a.nx), x1 = pool_end(wx, W, a.nx);
        const int64_t width = x1 - x0, count = (y1 - y0) * width;
        double acc = 0.0;
        for (int64_t i = lane; i < count; i += 32) {
          acc += channel_sum(s, a.B, b, (y0 + i / width) * W + x0 + i % width);
        }
        for (int offset = 16; offset > 0; offset >>= 1) {
          acc += __shfl_xor_sync(0xffffffffu, acc, offset);
        }
        if (lane == 0) pooled[w] = static_cast<float>(acc / static_cast<double>(count)) * scale;
      }
      __syncthreads();
      float largest_mean = -INFINITY;
      for (int64_t i = tid; i < windows; i += kChainThreads) largest_mean = fmaxf(largest_mean, pooled[i]);
      largest_mean = block_reduce(largest_mean, Max(), float_scratch);
      floor = fmaxf(largest_mean * kLocalFloor, kMinFloor);
    }

    float* dst = (k == 0 && H == a.Ho && W == a.Wo) ? out : buffers + (k % 2) * a.largest;
    for (int64_t i = tid; i < P; i += kChainThreads) {
      if (weight == 0.f) {
        dst[i] = 0.f;
        continue;
      }
      const int64_t y = i / W, x = i % W;
      float sw = channel_sum(s, a.B, b, i) * scale;
      if (a.local) {
        const BilinearTap py = bilinear_tap(y, a.ny, H), px = bilinear_tap(x, a.nx, W);
        sw = sw / (bilinear_at(pooled + py.lo * a.nx, pooled + py.hi * a.nx, py, px) + floor);
      }
      const BilinearTap ty = bilinear_tap(y, gh, H), tx = bilinear_tap(x, gw, W);
      dst[i] = (bilinear_at(g + ty.lo * gw, g + ty.hi * gw, ty, tx) * g_scale) * sw / weight;
    }
    __syncthreads();
    g_scale = 1.f;
    g = dst;
    gh = H;
    gw = W;
  }

  // The resize to the output size (a copy when the sizes agree), with the statistics; the raw map
  // gets the heatmap's scale back.
  const Normalize how = static_cast<Normalize>(a.normalize);
  const int64_t n = a.Ho * a.Wo;
  float lo = INFINITY, hi = -INFINITY;
  double sum = 0.0;
  bool nan = false;
  for (int64_t i = tid; i < n; i += kChainThreads) {
    float v;
    if (g == out) {
      v = out[i];
    } else if (gh == a.Ho && gw == a.Wo) {
      v = g[i] * g_scale;
    } else {
      const int64_t y = i / a.Wo, x = i % a.Wo;
      const BilinearTap ty = bilinear_tap(y, gh, a.Ho), tx = bilinear_tap(x, gw, a.Wo);
      v = bilinear_at(g + ty.lo * gw, g + ty.hi * gw, ty, tx) * g_scale;
    }
    if (how == Normalize::kNone) v = unscale(v, g_shift);
    out[i] = v;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
    sum += v;
    nan |= isnan(v);
  }
  if (how == Normalize::kNone) return;
  lo = block_reduce(lo, Min(), float_scratch);
  hi = block_reduce(hi, Max(), float_scratch);
  sum = block_reduce(sum, SumD(), double_scratch);
  nan = __syncthreads_or(nan);
  double squares = 0.0;
  if (how == Normalize::kStandardize && !nan) {
    const double mean = sum / static_cast<double>(n);
    for (int64_t i = tid; i < n; i += kChainThreads) {
      const double d = out[i] - mean;
      squares += d * d;
    }
    squares = block_reduce(squares, SumD(), double_scratch);
  }
  const Normalizer f = make_normalizer(how, lo, hi, nan, n, sum, squares);
  for (int64_t i = tid; i < n; i += kChainThreads) out[i] = f(out[i]);
}

at::Tensor extrapolate_chain_cuda(const at::Tensor& heatmap_in, at::TensorList sums_in,
                                  at::TensorList maxima_in, at::IntArrayRef windows,
                                  at::IntArrayRef output_size, bool local, int64_t normalize) {
  check_chain_args(heatmap_in, sums_in, maxima_in, windows, output_size, normalize);
  const int64_t K = static_cast<int64_t>(sums_in.size());
  TORCH_CHECK(K <= kMaxStages, "gradex::extrapolate_chain (cuda): at most ", kMaxStages,
              " stages per call, got ", K, " (gradex.extrapolate splits longer chains)");
  const c10::cuda::CUDAGuard guard(heatmap_in.device());
  const at::Tensor heatmap = heatmap_in.contiguous();
  const int64_t B = heatmap.size(0);
  at::Tensor out = at::empty({B, 1, output_size[0], output_size[1]}, heatmap.options());
  if (B == 0) return out;
  TORCH_CHECK(B <= 2147483647LL, "gradex::extrapolate_chain (cuda): batch must be below 2^31");

  ChainArgs a{};
  a.heatmap = heatmap.const_data_ptr<float>();
  a.B = B;
  a.h0 = heatmap.size(2);
  a.w0 = heatmap.size(3);
  a.K = static_cast<int>(K);
  a.local = local;
  a.normalize = static_cast<int>(normalize);
  a.ny = windows[0];
  a.nx = windows[1];
  a.Ho = output_size[0];
  a.Wo = output_size[1];
  std::vector<at::Tensor> keep;  // contiguous copies where needed (the reductions' are already)
  for (int64_t k = 0; k < K; ++k) {
    keep.push_back(sums_in[k].contiguous());
    keep.push_back(maxima_in[k].contiguous());
    const at::Tensor& s = keep[keep.size() - 2];
    const at::Tensor& m = keep.back();
    a.stages[k] = {s.const_data_ptr<float>(), m.const_data_ptr<float>(), s.size(0), m.size(1),
                   s.size(3), s.size(4)};
    a.largest = std::max(a.largest, s.size(3) * s.size(4));
  }
  // Scratch from the caching allocator (no launch; inside a CUDA graph, from its pool).
  at::Tensor scratch = at::empty({B * (2 * a.largest + a.ny * a.nx)}, heatmap.options());
  a.scratch = scratch.mutable_data_ptr<float>();
  a.out = out.mutable_data_ptr<float>();
  extrapolate_chain_kernel<<<static_cast<unsigned>(B), kChainThreads, 0,
                             c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradex, CUDA, m) { m.impl("extrapolate_chain", &extrapolate_chain_cuda); }

}  // namespace gradex

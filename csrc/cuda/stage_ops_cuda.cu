// CUDA kernels of the gradex ops (schemas and math: csrc/gradex.cpp). Every launch goes on the
// current stream and is checked; nothing here synchronises, so the ops can be graph-captured.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../stage_ops.h"

namespace gradex {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// The bit pattern of the canonical quiet NaN. Read as an int it is larger than the pattern of
// any non-negative float (+Inf included), so an integer atomicMax makes a NaN stick in M.
constexpr int kNanBits = 0x7fc00000;

int multiprocessor_count(int device) {
  static std::atomic<int> cache[128];
  if (device < 0 || device >= 128) device = 0;
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

struct StageGeometry {
  int64_t C, W, P;             // channels, width, positions per sample (H*W)
  int64_t sB, sC, sH, sW;      // element strides of the activation
  int64_t channels_per_split;  // channels each block sums (blockIdx.y picks the split)
  bool flat_plane;             // a position p sits at p * sW (contiguous or evenly strided plane)
  bool single_split;           // one block owns each output of S: store instead of atomicAdd
};

// One block: `tile` positions of sample blockIdx.z, channels of split blockIdx.y. Its 256 threads
// are `tile` position lanes × `lanes` channel lanes; with channels inner (channels_last) the
// channel lanes are the fast index, so a warp reads 32 consecutive channels of one position,
// otherwise the position lanes are, so a warp reads consecutive positions of one channel.
// Small planes (7×7, 14×14) get many channel lanes and channel splits, so that the grid still
// fills the GPU.
template <typename scalar_t, Transform T, bool kChannelsInner>
__global__ void __launch_bounds__(kThreads)
    reduce_stage_kernel(const scalar_t* __restrict__ activation, StageGeometry geo, int tile,
                        float* __restrict__ channel_sum, float* __restrict__ sample_max) {
  __shared__ float partial[kThreads];
  __shared__ float warp_max[kWarps];
  const int tid = threadIdx.x;
  const int lanes = kThreads / tile;
  const int position_lane = kChannelsInner ? tid / lanes : tid % tile;
  const int channel_lane = kChannelsInner ? tid % lanes : tid / tile;
  const int64_t b = blockIdx.z;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * tile + position_lane;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * geo.channels_per_split;
  const int64_t c_end =
      c_begin + geo.channels_per_split < geo.C ? c_begin + geo.channels_per_split : geo.C;

  float sum = 0.f, max_value = 0.f;  // M is clamped at 0: a non-positive max is dead anyway
  if (p < geo.P) {
    const int64_t position_offset =
        geo.flat_plane ? p * geo.sW : (p / geo.W) * geo.sH + (p % geo.W) * geo.sW;
    const scalar_t* src = activation + b * geo.sB + position_offset;
#pragma unroll 4
    for (int64_t c = c_begin + channel_lane; c < c_end; c += lanes) {
      const float v = apply_transform<T>(static_cast<float>(src[c * geo.sC]));
      sum += v;
      max_value = fmaxf(max_value, v);  // skips NaN; a NaN shows up in the sum instead
    }
  }

  partial[channel_lane * tile + position_lane] = sum;
  for (int offset = 16; offset > 0; offset >>= 1) {
    max_value = fmaxf(max_value, __shfl_xor_sync(0xffffffffu, max_value, offset));
  }
  if (tid % 32 == 0) warp_max[tid / 32] = max_value;
  __syncthreads();

  bool saw_nan = false;
  if (tid < tile) {
    const int64_t q = static_cast<int64_t>(blockIdx.x) * tile + tid;
    float total = 0.f;
    for (int lane = 0; lane < lanes; ++lane) total += partial[lane * tile + tid];
    if (q < geo.P) {
      float* out = channel_sum + b * geo.P + q;
      if (geo.single_split) {
        *out = total;
      } else {
        atomicAdd(out, total);
      }
      saw_nan = isnan(total);
    }
  }
  saw_nan = __syncthreads_or(saw_nan);
  if (tid == 0) {
    float block_max = warp_max[0];
    for (int w = 1; w < kWarps; ++w) block_max = fmaxf(block_max, warp_max[w]);
    int* target = reinterpret_cast<int*>(sample_max + b);
    if (saw_nan) {
      atomicMax(target, kNanBits);
    } else if (block_max > 0.f) {
      // Non-negative floats order like their bit patterns read as ints.
      atomicMax(target, __float_as_int(block_max));
    }
  }
}

int next_power_of_two(int64_t n) {
  int v = 1;
  while (v < n && v < kThreads) v <<= 1;
  return v;
}

std::tuple<at::Tensor, at::Tensor> reduce_stage_cuda(const at::Tensor& activation,
                                                     int64_t transform) {
  check_reduce_stage_args(activation, transform);
  const c10::cuda::CUDAGuard guard(activation.device());
  const int64_t B = activation.size(0), C = activation.size(1);
  const int64_t H = activation.size(2), W = activation.size(3), P = H * W;
  auto options = activation.options().dtype(at::kFloat);
  at::Tensor sample_max = at::zeros({B}, options);
  if (B == 0) return {at::empty({0, 1, H, W}, options), sample_max};
  TORCH_CHECK(B <= 65535, "gradex::reduce_stage (cuda): batch size must be at most 65535, got ", B);

  StageGeometry geo{C,
                    W,
                    P,
                    activation.stride(0),
                    activation.stride(1),
                    activation.stride(2),
                    activation.stride(3),
                    C,
                    H == 1 || activation.stride(2) == W * activation.stride(3),
                    true};
  const bool channels_inner = activation.stride(1) == 1 && C > 1;
  const int tile = channels_inner ? kThreads / 32 : std::max(32, next_power_of_two(P));
  const int lanes = kThreads / tile;
  const int64_t tiles = (P + tile - 1) / tile;

  // Split channels until the grid holds about eight blocks per SM, keeping ≥ 4 channels per
  // thread so that the atomics stay a small share of the work.
  const int64_t wanted_blocks = 8LL * multiprocessor_count(activation.get_device());
  const int64_t max_splits = std::max<int64_t>(1, C / (4LL * lanes));
  int64_t splits = std::clamp<int64_t>((wanted_blocks + tiles * B - 1) / (tiles * B), 1, max_splits);
  splits = std::min<int64_t>(splits, 65535);
  geo.channels_per_split = (C + splits - 1) / splits;
  splits = (C + geo.channels_per_split - 1) / geo.channels_per_split;
  geo.single_split = splits == 1;
  TORCH_CHECK(tiles <= 2147483647LL, "gradex::reduce_stage (cuda): activation plane too large");

  at::Tensor channel_sum =
      geo.single_split ? at::empty({B, 1, H, W}, options) : at::zeros({B, 1, H, W}, options);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits),
                  static_cast<unsigned>(B));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, activation.scalar_type(), "gradex::reduce_stage (cuda)", [&] {
        const scalar_t* a = activation.const_data_ptr<scalar_t>();
        float* s = channel_sum.mutable_data_ptr<float>();
        float* m = sample_max.mutable_data_ptr<float>();
        auto launch = [&](auto transform_tag) {
          constexpr Transform kT = decltype(transform_tag)::value;
          if (channels_inner) {
            reduce_stage_kernel<scalar_t, kT, true><<<grid, kThreads, 0, stream>>>(a, geo, tile, s, m);
          } else {
            reduce_stage_kernel<scalar_t, kT, false><<<grid, kThreads, 0, stream>>>(a, geo, tile, s, m);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        switch (static_cast<Transform>(transform)) {
          case Transform::kRelu:
            launch(std::integral_constant<Transform, Transform::kRelu>{});
            break;
          case Transform::kAbs:
            launch(std::integral_constant<Transform, Transform::kAbs>{});
            break;
          default:
            launch(std::integral_constant<Transform, Transform::kNone>{});
        }
      });
  return {channel_sum, sample_max};
}

__global__ void upsample_multiply_kernel(const float* __restrict__ g,
                                         const float* __restrict__ channel_sum,
                                         const float* __restrict__ sample_max,
                                         float* __restrict__ out, int64_t total, int64_t h,
                                         int64_t w, int64_t H, int64_t W) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = i % W, y = (i / W) % H, b = i / (H * W);
    const float m = sample_max[b];
    if (!stage_is_live(m)) {
      out[i] = 0.f;
      continue;
    }
    const BilinearTap ty = bilinear_tap(y, h, H), tx = bilinear_tap(x, w, W);
    const float* g_lo = g + (b * h + ty.lo) * w;
    const float* g_hi = g + (b * h + ty.hi) * w;
    const float up = ty.w_lo * (tx.w_lo * g_lo[tx.lo] + tx.w_hi * g_lo[tx.hi]) +
                     ty.w_hi * (tx.w_lo * g_hi[tx.lo] + tx.w_hi * g_hi[tx.hi]);
    out[i] = up * channel_sum[i] / m;
  }
}

at::Tensor upsample_multiply_cuda(const at::Tensor& g_in, const at::Tensor& channel_sum_in,
                                  const at::Tensor& sample_max_in) {
  check_upsample_multiply_args(g_in, channel_sum_in, sample_max_in);
  const c10::cuda::CUDAGuard guard(g_in.device());
  const at::Tensor g = g_in.contiguous();
  const at::Tensor channel_sum = channel_sum_in.contiguous();
  const at::Tensor sample_max = sample_max_in.contiguous();
  const int64_t B = g.size(0), H = channel_sum.size(2), W = channel_sum.size(3);
  at::Tensor out = at::empty({B, 1, H, W}, g.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads,
                                           32LL * multiprocessor_count(g.get_device()));
  upsample_multiply_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      g.const_data_ptr<float>(), channel_sum.const_data_ptr<float>(),
      sample_max.const_data_ptr<float>(), out.mutable_data_ptr<float>(), total, g.size(2),
      g.size(3), H, W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

constexpr int kNormalizeThreads = 512;

// Block-wide sum of a double; every thread gets the total.
__device__ double block_sum(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  __syncthreads();  // scratch may still be read by the previous call
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kNormalizeThreads / 32; ++w) total += scratch[w];
  return total;
}

// One block per sample: the maps are small (a few hundred KB at most) and stay in L2 for the
// three passes (statistics, spread, write).
__global__ void __launch_bounds__(kNormalizeThreads)
    normalize_maps_kernel(const float* __restrict__ g, float* __restrict__ out, int64_t n) {
  __shared__ double scratch[kNormalizeThreads / 32];
  __shared__ float lo_scratch[kNormalizeThreads / 32], hi_scratch[kNormalizeThreads / 32];
  const float* x = g + blockIdx.x * n;
  float* o = out + blockIdx.x * n;

  double sum = 0.0;
  float lo = INFINITY, hi = -INFINITY;
  bool saw_nan = false;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = x[i];
    sum += v;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
    saw_nan |= isnan(v);
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  if (threadIdx.x % 32 == 0) {
    lo_scratch[threadIdx.x / 32] = lo;
    hi_scratch[threadIdx.x / 32] = hi;
  }
  saw_nan = __syncthreads_or(saw_nan);
  for (int w = 0; w < kNormalizeThreads / 32; ++w) {
    lo = fminf(lo, lo_scratch[w]);
    hi = fmaxf(hi, hi_scratch[w]);
  }
  const double mean = block_sum(sum, scratch) / static_cast<double>(n);

  // Constancy is decided on the map itself, as the reference does (a NaN map counts too).
  if (saw_nan || !(hi > lo) || n < 2) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = 0.f;
    return;
  }
  double squares = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = x[i] - mean;
    squares += d * d;
  }
  squares = block_sum(squares, scratch);
  const float meanf = static_cast<float>(mean);
  const float std = static_cast<float>(sqrt(squares / static_cast<double>(n - 1)));
  const float z_lo = fminf(fmaxf((lo - meanf) / std, -1.f), 1.f);
  const float z_hi = fminf(fmaxf((hi - meanf) / std, -1.f), 1.f);
  const float span = z_hi - z_lo;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float z = fminf(fmaxf((x[i] - meanf) / std, -1.f), 1.f);
    o[i] = span > 0.f ? (z - z_lo) / span : 0.f;
  }
}

at::Tensor normalize_maps_cuda(const at::Tensor& g_in) {
  check_normalize_maps_args(g_in);
  const c10::cuda::CUDAGuard guard(g_in.device());
  const at::Tensor g = g_in.contiguous();
  const int64_t B = g.size(0), n = g.size(2) * g.size(3);
  at::Tensor out = at::empty({B, 1, g.size(2), g.size(3)}, g.options());
  if (B == 0 || n == 0) return out;
  TORCH_CHECK(B <= 2147483647LL, "gradex::normalize_maps (cuda): batch too large");
  normalize_maps_kernel<<<static_cast<unsigned>(B), kNormalizeThreads, 0,
                          c10::cuda::getCurrentCUDAStream()>>>(g.const_data_ptr<float>(),
                                                               out.mutable_data_ptr<float>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradex, CUDA, m) {
  m.impl("reduce_stage", &reduce_stage_cuda);
  m.impl("upsample_multiply", &upsample_multiply_cuda);
  m.impl("normalize_maps", &normalize_maps_cuda);
}

}  // namespace gradex

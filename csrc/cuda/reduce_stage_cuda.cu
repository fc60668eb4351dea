// CUDA kernel of gradex::reduce_stage (schema and contract: csrc/gradex.cpp). One launch, on the
// current stream, checked; it neither synchronises nor zeroes anything first, so it can be
// graph-captured and costs exactly one launch per stage.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../stage_ops.h"

namespace gradex {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

struct StageGeometry {
  int64_t B, C, W, P;        // batch, channels, width, positions per sample (H*W)
  int64_t sB, sC, sH, sW;    // element strides of the activation
  int64_t splits, chunks;    // channel splits × position chunks per sample: one block each
  int64_t per_split;         // channels a block sums
  int64_t per_chunk;         // positions a block covers
  bool flat_plane;           // a position p sits at p * sW (contiguous or evenly strided plane)
};

// One block: the positions of one chunk of sample b, the channels of one split. Its 256 threads
// are `tile` position lanes × `lanes` channel lanes; with channels inner (channels_last) the
// channel lanes are the fast index, so a warp reads 32 consecutive channels of one position,
// otherwise the position lanes are, so a warp reads consecutive positions of one channel. It
// writes its partial channel sums (every position of its chunk, zeros if its split is empty) and
// its partial maximum (NaN if one of its sums is NaN), each to a slot no other block writes.
template <typename scalar_t, Transform T, bool kChannelsInner>
__global__ void __launch_bounds__(kThreads)
    reduce_stage_kernel(const scalar_t* __restrict__ activation, StageGeometry geo, int tile,
                        float* __restrict__ sums, float* __restrict__ maxima) {
  __shared__ float partial[kThreads];
  __shared__ float warp_max[kWarps];
  const int tid = threadIdx.x;
  const int lanes = kThreads / tile;
  const int position_lane = kChannelsInner ? tid / lanes : tid % tile;
  const int channel_lane = kChannelsInner ? tid % lanes : tid / tile;
  const int64_t block = blockIdx.x;
  const int64_t chunk = block % geo.chunks;
  const int64_t split = (block / geo.chunks) % geo.splits;
  const int64_t b = block / (geo.chunks * geo.splits);
  const int64_t p_begin = chunk * geo.per_chunk;
  const int64_t p_end = p_begin + geo.per_chunk < geo.P ? p_begin + geo.per_chunk : geo.P;
  const int64_t c_begin = split * geo.per_split;
  const int64_t c_end = c_begin + geo.per_split < geo.C ? c_begin + geo.per_split : geo.C;
  float* out = sums + (split * geo.B + b) * geo.P;

  float max_value = 0.f;  // M is clamped at 0: a non-positive max is dead anyway
  bool saw_nan = false;
  for (int64_t p0 = p_begin; p0 < p_end; p0 += tile) {
    const int64_t p = p0 + position_lane;
    float sum = 0.f;
    if (p < p_end) {
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
    __syncthreads();
    if (tid < tile && p0 + tid < p_end) {
      float total = 0.f;
      for (int lane = 0; lane < lanes; ++lane) total += partial[lane * tile + tid];
      out[p0 + tid] = total;
      saw_nan |= isnan(total);
    }
    __syncthreads();  // `partial` is rewritten by the next tile
  }

  for (int offset = 16; offset > 0; offset >>= 1) {
    max_value = fmaxf(max_value, __shfl_xor_sync(0xffffffffu, max_value, offset));
  }
  if (tid % 32 == 0) warp_max[tid / 32] = max_value;
  saw_nan = __syncthreads_or(saw_nan);
  if (tid == 0) {
    float block_max = warp_max[0];
    for (int w = 1; w < kWarps; ++w) block_max = fmaxf(block_max, warp_max[w]);
    maxima[b * geo.splits * geo.chunks + split * geo.chunks + chunk] =
        saw_nan ? __int_as_float(0x7fc00000) : block_max;
  }
}

int position_tile(int64_t positions) {
  int v = 32;
  while (v < positions && v < kThreads) v <<= 1;
  return v;
}

std::tuple<at::Tensor, at::Tensor> reduce_stage_cuda(const at::Tensor& activation,
                                                     int64_t transform, int64_t splits,
                                                     int64_t chunks) {
  check_reduce_stage_args(activation, transform, splits, chunks);
  const c10::cuda::CUDAGuard guard(activation.device());
  const int64_t B = activation.size(0), C = activation.size(1);
  const int64_t H = activation.size(2), W = activation.size(3), P = H * W;
  auto options = activation.options().dtype(at::kFloat);
  at::Tensor sums = at::empty({splits, B, 1, H, W}, options);
  at::Tensor maxima = at::empty({B, splits * chunks}, options);
  if (B == 0) return {sums, maxima};
  const int64_t blocks = B * splits * chunks;
  TORCH_CHECK(blocks <= 2147483647LL,
              "gradex::reduce_stage (cuda): batch × splits × chunks must be below 2^31, got ",
              blocks);

  StageGeometry geo{B,
                    C,
                    W,
                    P,
                    activation.stride(0),
                    activation.stride(1),
                    activation.stride(2),
                    activation.stride(3),
                    splits,
                    chunks,
                    (C + splits - 1) / splits,
                    (P + chunks - 1) / chunks,
                    H == 1 || activation.stride(2) == W * activation.stride(3)};
  const bool channels_inner = activation.stride(1) == 1 && C > 1;
  const int tile = channels_inner ? kThreads / 32 : position_tile(geo.per_chunk);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, activation.scalar_type(), "gradex::reduce_stage (cuda)", [&] {
        const scalar_t* a = activation.const_data_ptr<scalar_t>();
        float* s = sums.mutable_data_ptr<float>();
        float* m = maxima.mutable_data_ptr<float>();
        auto launch = [&](auto transform_tag) {
          constexpr Transform kT = decltype(transform_tag)::value;
          if (channels_inner) {
            reduce_stage_kernel<scalar_t, kT, true>
                <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, geo, tile, s, m);
          } else {
            reduce_stage_kernel<scalar_t, kT, false>
                <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, geo, tile, s, m);
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
  return {sums, maxima};
}

// Whether this build carries a kernel image (or PTX) the device can run: an architecture missing
// from TORCH_CUDA_ARCH_LIST at build time fails here instead of at the first launch.
bool cuda_device_supported(int64_t device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attributes;
  const cudaError_t status = cudaFuncGetAttributes(
      &attributes, reduce_stage_kernel<float, Transform::kNone, false>);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // not a sticky error: clear it, so later checks do not see it
    return false;
  }
  return true;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gradex, m) {
  m.def("cuda_device_supported(int device) -> bool", &cuda_device_supported);
}

TORCH_LIBRARY_IMPL(gradex, CUDA, m) { m.impl("reduce_stage", &reduce_stage_cuda); }

}  // namespace gradex

// CPU kernel of gradex::reduce_stage (schema and contract: csrc/gradex.cpp). Threads come from
// at::parallel_for (OpenMP in torch's builds, sized by torch.set_num_threads); inner loops are
// written so that the compiler vectorises them (omp simd reductions over contiguous runs).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../stage_ops.h"

namespace gradex {
namespace {

// Runs of activation values, one per channel, that land on the same consecutive outputs of S.
// Four channels per pass over `acc` quarter its loads and stores, which otherwise bound the loop.
template <typename scalar_t, Transform T>
inline float accumulate_runs(const scalar_t* src, int64_t channels, int64_t channel_stride,
                             int64_t n, int64_t stride, float* acc, float m) {
  int64_t c = 0;
  if (stride == 1) {
    for (; c + 4 <= channels; c += 4) {
      const scalar_t* r0 = src + c * channel_stride;
      const scalar_t* r1 = r0 + channel_stride;
      const scalar_t* r2 = r1 + channel_stride;
      const scalar_t* r3 = r2 + channel_stride;
#pragma omp simd reduction(max : m)
      for (int64_t i = 0; i < n; ++i) {
        const float v0 = apply_transform<T>(static_cast<float>(r0[i]));
        const float v1 = apply_transform<T>(static_cast<float>(r1[i]));
        const float v2 = apply_transform<T>(static_cast<float>(r2[i]));
        const float v3 = apply_transform<T>(static_cast<float>(r3[i]));
        acc[i] += (v0 + v1) + (v2 + v3);
        const float m01 = v0 > v1 ? v0 : v1;
        const float m23 = v2 > v3 ? v2 : v3;
        const float m03 = m01 > m23 ? m01 : m23;
        m = m03 > m ? m03 : m;
      }
    }
    for (; c < channels; ++c) {
      const scalar_t* r = src + c * channel_stride;
#pragma omp simd reduction(max : m)
      for (int64_t i = 0; i < n; ++i) {
        const float v = apply_transform<T>(static_cast<float>(r[i]));
        acc[i] += v;
        m = v > m ? v : m;
      }
    }
  } else {
    for (; c < channels; ++c) {
      const scalar_t* r = src + c * channel_stride;
      for (int64_t i = 0; i < n; ++i) {
        const float v = apply_transform<T>(static_cast<float>(r[i * stride]));
        acc[i] += v;
        m = v > m ? v : m;
      }
    }
  }
  return m;
}

// Σ_c over a run of channels (channels_last), with the running max. A single vector accumulator
// would make every add wait for the previous one; 16 lanes of partial sums (and maxima) give the
// compiler independent vector chains to interleave.
template <typename scalar_t, Transform T>
inline float sum_channels(const scalar_t* src, int64_t channels, int64_t stride, float& m) {
  constexpr int64_t kLanes = 16;
  float sums[kLanes] = {};
  float maxima[kLanes] = {};
  int64_t c = 0;
  if (stride == 1) {
    for (; c + kLanes <= channels; c += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        const float v = apply_transform<T>(static_cast<float>(src[c + j]));
        sums[j] += v;
        maxima[j] = v > maxima[j] ? v : maxima[j];
      }
    }
  }
  float s = 0.f, mm = m;
  for (int64_t j = 0; j < kLanes; ++j) {
    s += sums[j];
    mm = maxima[j] > mm ? maxima[j] : mm;
  }
  for (; c < channels; ++c) {
    const float v = apply_transform<T>(static_cast<float>(src[c * stride]));
    s += v;
    mm = v > mm ? v : mm;
  }
  m = mm;
  return s;
}

// Spatial positions per task when a sample's H×W plane is contiguous: 16 KiB of fp32 partial
// sums stay in L1/L2 while every channel streams past them once.
constexpr int64_t kPlaneChunk = 4096;

template <typename scalar_t, Transform T>
void reduce_stage_kernel(const at::Tensor& activation, float* S, float* M, int64_t m_stride) {
  const int64_t B = activation.size(0), C = activation.size(1);
  const int64_t H = activation.size(2), W = activation.size(3), P = H * W;
  const int64_t sB = activation.stride(0), sC = activation.stride(1);
  const int64_t sH = activation.stride(2), sW = activation.stride(3);
  const scalar_t* a = activation.const_data_ptr<scalar_t>();

  // Channels inner (channels_last): each output sums one contiguous run of C values.
  const bool channels_inner = sC == 1 && C > 1;
  // Spatial inner with a contiguous plane (NCHW): tasks are chunks of the flattened plane.
  const bool flat_plane = !channels_inner && sW == 1 && (H == 1 || sH == W);
  const int64_t tasks_per_sample = flat_plane ? (P + kPlaneChunk - 1) / kPlaneChunk : H;
  std::vector<float> task_max(B * tasks_per_sample, 0.f);

  const int64_t work_per_task = flat_plane ? std::min(P, kPlaneChunk) * C : W * C;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_task));
  at::parallel_for(0, B * tasks_per_sample, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tasks_per_sample, t = task % tasks_per_sample;
      float m = 0.f;  // M is reported clamped at 0: a non-positive max means a dead stage anyway
      if (channels_inner) {
        const int64_t y = t;
        float* out = S + b * P + y * W;
        for (int64_t x = 0; x < W; ++x) {
          out[x] = sum_channels<scalar_t, T>(a + b * sB + y * sH + x * sW, C, sC, m);
        }
      } else {
        int64_t first, count, src_offset, stride;
        if (flat_plane) {
          first = t * kPlaneChunk;
          count = std::min(kPlaneChunk, P - first);
          src_offset = first;
          stride = 1;
        } else {
          first = t * W;
          count = W;
          src_offset = t * sH;
          stride = sW;
        }
        float* out = S + b * P + first;
        std::fill(out, out + count, 0.f);
        const scalar_t* sample = a + b * sB + src_offset;
        m = accumulate_runs<scalar_t, T>(sample, C, sC, count, stride, out, m);
      }
      task_max[task] = m;
    }
  });

  // The max skips NaN (vectorised compares do), but a NaN anywhere also lands in S: reporting
  // M = NaN then marks the stage dead, as the reference's NaN-propagating amax does.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float m = 0.f;
      for (int64_t t = 0; t < tasks_per_sample; ++t) m = std::max(m, task_max[b * tasks_per_sample + t]);
      const float* s = S + b * P;
      bool any_nan = false;
      for (int64_t p = 0; p < P; ++p) any_nan |= std::isnan(s[p]);
      M[b * m_stride] = any_nan ? std::numeric_limits<float>::quiet_NaN() : m;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> reduce_stage_cpu(const at::Tensor& activation,
                                                    int64_t transform, int64_t splits,
                                                    int64_t chunks) {
  check_reduce_stage_args(activation, transform, splits, chunks);
  const int64_t B = activation.size(0), H = activation.size(2), W = activation.size(3);
  auto options = activation.options().dtype(at::kFloat);
  // One pass gives the whole S and M: they go in the first part, the others (if the caller
  // asked for a partition) hold the identities of the sum and the max.
  at::Tensor sums = at::empty({splits, B, 1, H, W}, options);
  at::Tensor maxima = at::empty({B, splits * chunks}, options);
  if (B == 0) return {sums, maxima};
  if (splits > 1) sums.narrow(0, 1, splits - 1).zero_();
  if (splits * chunks > 1) maxima.narrow(1, 1, splits * chunks - 1).zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, activation.scalar_type(), "gradex::reduce_stage (cpu)", [&] {
        float* s = sums.mutable_data_ptr<float>();
        float* m = maxima.mutable_data_ptr<float>();
        const int64_t m_stride = splits * chunks;
        switch (static_cast<Transform>(transform)) {
          case Transform::kRelu:
            reduce_stage_kernel<scalar_t, Transform::kRelu>(activation, s, m, m_stride);
            break;
          case Transform::kAbs:
            reduce_stage_kernel<scalar_t, Transform::kAbs>(activation, s, m, m_stride);
            break;
          default:
            reduce_stage_kernel<scalar_t, Transform::kNone>(activation, s, m, m_stride);
        }
      });
  return {sums, maxima};
}

}  // namespace

TORCH_LIBRARY_IMPL(gradex, CPU, m) { m.impl("reduce_stage", &reduce_stage_cpu); }

}  // namespace gradex

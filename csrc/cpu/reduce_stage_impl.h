// CPU kernel of gradex::reduce_stage (schema and contract: csrc/gradex.cpp), compiled once per
// instruction set (kernels_*.cpp define GRADEX_CPU_ISA and include kernel_deps.h first).
//
// Threads come from at::parallel_for (OpenMP in torch's builds, sized by torch.set_num_threads);
// inner loops are written so that the compiler vectorises them (omp simd over contiguous runs,
// several independent accumulators per loop, so that no add waits for the previous one).

namespace gradex {
namespace cpu {
namespace GRADEX_CPU_ISA {
namespace {

template <typename scalar_t, Transform T>
inline float load(const scalar_t* p) {
  return apply_transform<T>(static_cast<float>(*p));
}

// NCHW: runs of activation values, one per channel, that land on the same consecutive outputs
// of S. Four channels per pass over `acc` quarter its loads and stores, which otherwise bound the
// loop.
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
        const float v0 = load<scalar_t, T>(r0 + i);
        const float v1 = load<scalar_t, T>(r1 + i);
        const float v2 = load<scalar_t, T>(r2 + i);
        const float v3 = load<scalar_t, T>(r3 + i);
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
        const float v = load<scalar_t, T>(r + i);
        acc[i] += v;
        m = v > m ? v : m;
      }
    }
  } else {
    for (; c < channels; ++c) {
      const scalar_t* r = src + c * channel_stride;
      for (int64_t i = 0; i < n; ++i) {
        const float v = load<scalar_t, T>(r + i * stride);
        acc[i] += v;
        m = v > m ? v : m;
      }
    }
  }
  return m;
}

// channels_last: Σ_c of kPositions positions at once (`step` elements apart in the activation,
// `out_step` in S), each over kLanes partial sums folded in halves at the end (each fold one
// vector operation); `top` holds kLanes running maxima shared by all positions.
constexpr int64_t kLanes = 8;

template <typename scalar_t, Transform T, int64_t kPositions>
inline void sum_channels(const scalar_t* src, int64_t step, int64_t channels, float* out,
                         int64_t out_step, float* top) {
  float sums[kPositions][kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= channels; c += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      float m = top[j];
      for (int64_t p = 0; p < kPositions; ++p) {
        const float v = load<scalar_t, T>(src + p * step + c + j);
        sums[p][j] += v;
        m = v > m ? v : m;
      }
      top[j] = m;
    }
  }
  for (int64_t p = 0; p < kPositions; ++p) {
    float* lanes = sums[p];
    for (int64_t half = kLanes / 2; half > 0; half /= 2) {
#pragma omp simd
      for (int64_t j = 0; j < half; ++j) lanes[j] += lanes[j + half];
    }
    float total = lanes[0];
    for (int64_t k = c; k < channels; ++k) {
      const float v = load<scalar_t, T>(src + p * step + k);
      total += v;
      top[0] = v > top[0] ? v : top[0];
    }
    out[p * out_step] = total;
  }
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

  // Channels inner (channels_last): each output sums one contiguous run of C values. A task
  // takes kRows rows and sums one position of each at a time: kRows streams through memory at
  // once, as the NCHW kernel reads kRows channels, which keeps more reads in flight than one.
  const bool channels_inner = sC == 1 && C > 1;
  constexpr int64_t kRows = 4;
  // Spatial inner with a contiguous plane (NCHW): tasks are chunks of the flattened plane.
  const bool flat_plane = !channels_inner && sW == 1 && (H == 1 || sH == W);
  const int64_t tasks_per_sample = flat_plane      ? (P + kPlaneChunk - 1) / kPlaneChunk
                                   : channels_inner ? (H + kRows - 1) / kRows
                                                    : H;
  // Per task: its maximum, and whether one of its sums is NaN.
  std::vector<float> task_max(B * tasks_per_sample, 0.f);
  std::vector<char> task_nan(B * tasks_per_sample, 0);

  const int64_t work_per_task = flat_plane       ? std::min(P, kPlaneChunk) * C
                                : channels_inner ? kRows * W * C
                                                 : W * C;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_task));
  at::parallel_for(0, B * tasks_per_sample, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tasks_per_sample, t = task % tasks_per_sample;
      float m = 0.f;  // M is reported clamped at 0: a non-positive max means a dead stage anyway
      float* out;
      int64_t count;
      if (channels_inner) {
        const int64_t y0 = t * kRows, rows = std::min(kRows, H - y0);
        out = S + b * P + y0 * W;
        count = rows * W;
        const scalar_t* first = a + b * sB + y0 * sH;
        float top[kLanes] = {};
        for (int64_t x = 0; x < W; ++x) {
          if (rows == kRows) {
            sum_channels<scalar_t, T, kRows>(first + x * sW, sH, C, out + x, W, top);
          } else {
            for (int64_t r = 0; r < rows; ++r) {
              sum_channels<scalar_t, T, 1>(first + r * sH + x * sW, 0, C, out + r * W + x, 0, top);
            }
          }
        }
        for (int64_t j = 0; j < kLanes; ++j) m = top[j] > m ? top[j] : m;
      } else {
        int64_t first, src_offset, stride;
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
        out = S + b * P + first;
        std::fill(out, out + count, 0.f);
        m = accumulate_runs<scalar_t, T>(a + b * sB + src_offset, C, sC, count, stride, out, m);
      }
      // The max skips NaN (vectorised compares do), but a NaN anywhere also lands in S.
      int nans = 0;
#pragma omp simd reduction(+ : nans)
      for (int64_t i = 0; i < count; ++i) nans += out[i] != out[i];
      task_max[task] = m;
      task_nan[task] = nans > 0;
    }
  });

  // M = NaN for a stage that held a NaN marks it dead, as the reference's NaN-propagating amax.
  for (int64_t b = 0; b < B; ++b) {
    float m = 0.f;
    bool nan = false;
    for (int64_t t = 0; t < tasks_per_sample; ++t) {
      m = std::max(m, task_max[b * tasks_per_sample + t]);
      nan |= task_nan[b * tasks_per_sample + t] != 0;
    }
    M[b * m_stride] = nan ? std::numeric_limits<float>::quiet_NaN() : m;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> reduce_stage(const at::Tensor& activation, int64_t transform,
                                                int64_t splits, int64_t chunks) {
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

}  // namespace GRADEX_CPU_ISA
}  // namespace cpu
}  // namespace gradex

// CPU kernel of gradex::extrapolate_chain (schema and contract: csrc/gradex.cpp): everything GE
// does after the stage reductions, on maps C_k times smaller than the activations, in one op.
//
// Each phase runs over rows of every sample at once (at::parallel_for), so that batch 1 uses every
// thread as well as batch 64: per stage, the window means of the 'local' weighting, then the step
// (bilinear upsample of the map × the weighted channel sum, written once); then the resize to the
// output size with each row's statistics, and the normalisation in place.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../stage_ops.h"

namespace gradex {
namespace {

// One reduced stage as the chain reads it: `parts` partial sums of S per sample, `m` partial
// maxima per sample.
struct StageView {
  const float* sums;
  int64_t parts;
  const float* maxima;
  int64_t m;
  int64_t H, W;
};

// Row `y` of S for sample b: the first part, with the others added (the CPU reduction leaves a
// single part; other callers may pass more).
inline void channel_sum_row(const StageView& s, int64_t B, int64_t b, int64_t y, float* row) {
  const int64_t P = s.H * s.W;
  const float* first = s.sums + b * P + y * s.W;
  std::copy(first, first + s.W, row);
  for (int64_t n = 1; n < s.parts; ++n) {
    const float* part = s.sums + (n * B + b) * P + y * s.W;
    for (int64_t x = 0; x < s.W; ++x) row[x] += part[x];
  }
}

inline float stage_max(const StageView& s, int64_t b) {
  const float* m = s.maxima + b * s.m;
  float top = m[0];
  for (int64_t i = 1; i < s.m; ++i) {
    if (std::isnan(m[i]) || m[i] > top) top = m[i];  // a NaN anywhere marks the stage
    if (std::isnan(top)) break;
  }
  return top;
}

std::vector<BilinearTap> taps(int64_t in_size, int64_t out_size) {
  std::vector<BilinearTap> t(out_size);
  for (int64_t i = 0; i < out_size; ++i) t[i] = bilinear_tap(i, in_size, out_size);
  return t;
}

// Rows per task: enough work (~16K output values) to be worth a thread.
int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width)); }

// 'local' weighting: each window's mean of S (summed in double: exact for a constant S), and the
// floor, per sample. `pooled` is (B, ny, nx).
void window_means(const StageView& s, int64_t B, int64_t ny, int64_t nx, float* pooled,
                  float* floors) {
  at::parallel_for(0, B * ny, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(s.W);
    std::vector<double> sums(nx);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / ny, wy = task % ny;
      const int64_t y0 = pool_begin(wy, s.H, ny), y1 = pool_end(wy, s.H, ny);
      std::fill(sums.begin(), sums.end(), 0.0);
      for (int64_t y = y0; y < y1; ++y) {
        channel_sum_row(s, B, b, y, row.data());
        for (int64_t wx = 0; wx < nx; ++wx) {
          const int64_t x0 = pool_begin(wx, s.W, nx), x1 = pool_end(wx, s.W, nx);
          double acc = 0.0;
          for (int64_t x = x0; x < x1; ++x) acc += row[x];
          sums[wx] += acc;
        }
      }
      for (int64_t wx = 0; wx < nx; ++wx) {
        const int64_t x0 = pool_begin(wx, s.W, nx), x1 = pool_end(wx, s.W, nx);
        pooled[task * nx + wx] = static_cast<float>(sums[wx] / static_cast<double>((y1 - y0) * (x1 - x0)));
      }
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    const float* p = pooled + b * ny * nx;
    float top = p[0];
    for (int64_t i = 1; i < ny * nx; ++i) top = std::max(top, p[i]);
    floors[b] = std::max(top * kLocalFloor, kMinFloor);
  }
}

// Running statistics of one row of the output (NaN-aware min/max, sum in double).
struct RowStats {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  double sum = 0.0;
  bool nan = false;
};

at::Tensor extrapolate_chain_cpu(const at::Tensor& heatmap_in, at::TensorList sums_in,
                                 at::TensorList maxima_in, at::IntArrayRef windows,
                                 at::IntArrayRef output_size, bool local, int64_t normalize) {
  check_chain_args(heatmap_in, sums_in, maxima_in, windows, output_size, normalize);
  const at::Tensor heatmap = heatmap_in.contiguous();
  const int64_t B = heatmap.size(0), K = static_cast<int64_t>(sums_in.size());
  const int64_t Ho = output_size[0], Wo = output_size[1];
  const int64_t ny = windows[0], nx = windows[1];
  at::Tensor out = at::empty({B, 1, Ho, Wo}, heatmap.options());
  if (B == 0) return out;

  std::vector<at::Tensor> keep;  // contiguous copies where needed, alive for the whole call
  std::vector<StageView> stages(K);
  int64_t largest = 0;
  for (int64_t k = 0; k < K; ++k) {
    keep.push_back(sums_in[k].contiguous());
    keep.push_back(maxima_in[k].contiguous());
    const at::Tensor& s = keep[keep.size() - 2];
    const at::Tensor& m = keep.back();
    stages[k] = {s.const_data_ptr<float>(), s.size(0), m.const_data_ptr<float>(), m.size(1),
                 s.size(3), s.size(4)};
    largest = std::max(largest, s.size(3) * s.size(4));
  }
  float* out_ptr = out.mutable_data_ptr<float>();
  std::vector<float> buffers[2] = {std::vector<float>(B * largest), std::vector<float>(B * largest)};
  std::vector<float> pooled(local ? B * ny * nx : 0), floors(B), weights(B);

  // The map so far: the heatmap, then each stage's result (the shallowest may go straight into
  // `out` when no resize follows).
  const float* g = heatmap.const_data_ptr<float>();
  int64_t gh = heatmap.size(2), gw = heatmap.size(3);
  for (int64_t k = K - 1; k >= 0; --k) {
    const StageView& s = stages[k];
    const int64_t H = s.H, W = s.W;
    for (int64_t b = 0; b < B; ++b) {
      const float top = stage_max(s, b);
      // 0 marks a dead stage; the local weighting replaces M by 1 on live ones.
      weights[b] = stage_is_live(top) ? (local ? 1.f : top) : 0.f;
    }
    if (local) window_means(s, B, ny, nx, pooled.data(), floors.data());
    const bool last = k == 0 && H == Ho && W == Wo;
    float* dst = last ? out_ptr : buffers[k % 2].data();
    const std::vector<BilinearTap> g_cols = taps(gw, W);
    const std::vector<BilinearTap> pool_cols = local ? taps(nx, W) : std::vector<BilinearTap>();
    at::parallel_for(0, B * H, row_grain(W), [&](int64_t begin, int64_t end) {
      std::vector<float> row(W);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / H, y = task % H;
        float* o = dst + task * W;
        const float weight = weights[b];
        if (weight == 0.f) {
          std::fill(o, o + W, 0.f);
          continue;
        }
        channel_sum_row(s, B, b, y, row.data());
        if (local) {
          const BilinearTap py = bilinear_tap(y, ny, H);
          const float* p = pooled.data() + b * ny * nx;
          const float* p_lo = p + py.lo * nx;
          const float* p_hi = p + py.hi * nx;
          const float floor = floors[b];
          for (int64_t x = 0; x < W; ++x) {
            row[x] = row[x] / (bilinear_at(p_lo, p_hi, py, pool_cols[x]) + floor);
          }
        }
        const BilinearTap ty = bilinear_tap(y, gh, H);
        const float* g_lo = g + (b * gh + ty.lo) * gw;
        const float* g_hi = g + (b * gh + ty.hi) * gw;
        for (int64_t x = 0; x < W; ++x) o[x] = bilinear_at(g_lo, g_hi, ty, g_cols[x]) * row[x] / weight;
      }
    });
    g = dst;
    gh = H;
    gw = W;
  }

  // The resize to the output size (a copy when the sizes agree), with each row's statistics.
  const Normalize how = static_cast<Normalize>(normalize);
  std::vector<RowStats> rows(how == Normalize::kNone ? 0 : B * Ho);
  const std::vector<BilinearTap> out_cols = taps(gw, Wo);
  at::parallel_for(0, B * Ho, row_grain(Wo), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Ho, y = task % Ho;
      float* o = out_ptr + task * Wo;
      if (g != out_ptr) {
        if (gh == Ho && gw == Wo) {
          std::copy(g + task * Wo, g + (task + 1) * Wo, o);
        } else {
          const BilinearTap ty = bilinear_tap(y, gh, Ho);
          const float* g_lo = g + (b * gh + ty.lo) * gw;
          const float* g_hi = g + (b * gh + ty.hi) * gw;
          for (int64_t x = 0; x < Wo; ++x) o[x] = bilinear_at(g_lo, g_hi, ty, out_cols[x]);
        }
      }
      if (rows.empty()) continue;
      RowStats st;
      for (int64_t x = 0; x < Wo; ++x) {
        const float v = o[x];
        st.nan |= std::isnan(v);
        st.lo = std::min(st.lo, v);
        st.hi = std::max(st.hi, v);
        st.sum += v;
      }
      rows[task] = st;
    }
  });
  if (how == Normalize::kNone) return out;

  // Per sample: combine the rows' statistics; the spread around the mean for standardising.
  const int64_t n = Ho * Wo;
  std::vector<Normalizer> normalizers(B);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      RowStats all;
      for (int64_t y = 0; y < Ho; ++y) {
        const RowStats& r = rows[b * Ho + y];
        all.nan |= r.nan;
        all.lo = std::min(all.lo, r.lo);
        all.hi = std::max(all.hi, r.hi);
        all.sum += r.sum;
      }
      double squares = 0.0;
      if (how == Normalize::kStandardize && !all.nan) {
        const double mean = all.sum / static_cast<double>(n);
        const float* x = out_ptr + b * n;
        for (int64_t i = 0; i < n; ++i) squares += (x[i] - mean) * (x[i] - mean);
      }
      normalizers[b] = make_normalizer(how, all.lo, all.hi, all.nan, n, all.sum, squares);
    }
  });
  at::parallel_for(0, B * Ho, row_grain(Wo), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const Normalizer& f = normalizers[task / Ho];
      float* o = out_ptr + task * Wo;
      for (int64_t x = 0; x < Wo; ++x) o[x] = f(o[x]);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gradex, CPU, m) { m.impl("extrapolate_chain", &extrapolate_chain_cpu); }

}  // namespace gradex

// CPU kernel of gradex::extrapolate_chain (schema and contract: csrc/gradex.cpp): everything GE
// does after the stage reductions, on maps C_k times smaller than the activations, in one op.
// Compiled once per instruction set (kernels_*.cpp define GRADEX_CPU_ISA and include
// kernel_deps.h first).
//
// Each phase runs over rows of every sample at once (at::parallel_for), so that batch 1 uses every
// thread as well as batch 64: per stage, the window means of the 'local' weighting, then the step
// (bilinear upsample of the map × the weighted channel sum, written once); then the resize to the
// output size with each row's statistics, and the normalisation in place.
//
// Bilinear resizing is separable, and computed as ATen does, each source row interpolated along
// x first, then two such rows blended along y. Consecutive output rows read the same source rows
// (an upsampling reads each about twice), so a task keeps the last two interpolated rows and the
// inner loops are plain vector arithmetic over a row.

namespace gradex {
namespace cpu {
namespace GRADEX_CPU_ISA {
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

// Row y of S for sample b: a pointer into the first part when it is the only one (the CPU
// reduction leaves one), else the parts added into `scratch`.
inline const float* channel_sum_row(const StageView& s, int64_t B, int64_t b, int64_t y,
                                    float* scratch) {
  const int64_t P = s.H * s.W;
  const float* first = s.sums + b * P + y * s.W;
  if (s.parts == 1) return first;
  std::copy(first, first + s.W, scratch);
  for (int64_t n = 1; n < s.parts; ++n) {
    const float* part = s.sums + (n * B + b) * P + y * s.W;
    for (int64_t x = 0; x < s.W; ++x) scratch[x] += part[x];
  }
  return scratch;
}

inline float stage_max(const StageView& s, int64_t b) {
  const float* m = s.maxima + b * s.m;
  float top = m[0];
  for (int64_t i = 1; i < s.m && !std::isnan(top); ++i) {
    if (std::isnan(m[i]) || m[i] > top) top = m[i];  // a NaN anywhere marks the stage
  }
  return top;
}

// The taps of one axis, as arrays (the inner loops read them as vectors).
struct AxisTaps {
  int64_t in_size, out_size;
  std::vector<int64_t> lo, hi;
  std::vector<float> w_lo, w_hi;
  // An exact 2× upsampling (the usual step of a CNN's pyramid): output 2i reads source i-1 and i,
  // output 2i+1 reads i and i+1 (edges aside), so a row is contiguous vector arithmetic.
  bool doubling;

  AxisTaps(int64_t in, int64_t out)
      : in_size(in), out_size(out), lo(out), hi(out), w_lo(out), w_hi(out), doubling(out == 2 * in) {
    for (int64_t i = 0; i < out; ++i) {
      const BilinearTap t = bilinear_tap(i, in, out);
      lo[i] = t.lo;
      hi[i] = t.hi;
      w_lo[i] = t.w_lo;
      w_hi[i] = t.w_hi;
    }
    for (int64_t i = 1; doubling && i + 1 < in; ++i) {
      doubling = lo[2 * i] == i - 1 && hi[2 * i] == i && lo[2 * i + 1] == i && hi[2 * i + 1] == i + 1;
    }
  }
};

// One source row interpolated along x: out[x] = w_lo[x] * src[lo[x]] + w_hi[x] * src[hi[x]].
inline void interpolate_row(const float* src, const AxisTaps& t, float* out) {
  const int64_t* lo = t.lo.data();
  const int64_t* hi = t.hi.data();
  const float* w_lo = t.w_lo.data();
  const float* w_hi = t.w_hi.data();
  if (t.doubling && t.in_size >= 2) {
    // The same products as below, with the source read at i-1, i, i+1 instead of gathered.
    const int64_t n = t.in_size;
#pragma omp simd
    for (int64_t i = 1; i < n - 1; ++i) {
      out[2 * i] = w_lo[2 * i] * src[i - 1] + w_hi[2 * i] * src[i];
      out[2 * i + 1] = w_lo[2 * i + 1] * src[i] + w_hi[2 * i + 1] * src[i + 1];
    }
    for (const int64_t x : {int64_t{0}, int64_t{1}, 2 * n - 2, 2 * n - 1}) {
      out[x] = w_lo[x] * src[lo[x]] + w_hi[x] * src[hi[x]];
    }
    return;
  }
  for (int64_t x = 0; x < t.out_size; ++x) out[x] = w_lo[x] * src[lo[x]] + w_hi[x] * src[hi[x]];
}

// Source rows interpolated along x, the last two a task asked for (output rows come in order,
// so their source rows do too).
class RowCache {
 public:
  explicit RowCache(const AxisTaps& columns)
      : columns_(columns),
        rows_{std::vector<float>(columns.out_size), std::vector<float>(columns.out_size)} {}

  // Row `key` of the map at `source` (its first element), interpolated to the output width.
  const float* get(int64_t key, const float* source) {
    for (int slot = 0; slot < 2; ++slot) {
      if (keys_[slot] == key) return rows_[slot].data();
    }
    const int slot = next_;
    next_ ^= 1;
    keys_[slot] = key;
    interpolate_row(source, columns_, rows_[slot].data());
    return rows_[slot].data();
  }

 private:
  const AxisTaps& columns_;
  std::vector<float> rows_[2];
  int64_t keys_[2] = {-1, -1};
  int next_ = 0;
};

// out = w_lo * a + w_hi * b over a row: the y-blend of two x-interpolated rows.
inline void blend_rows(const float* a, const float* b, float w_lo, float w_hi, int64_t n,
                       float* out) {
#pragma omp simd
  for (int64_t x = 0; x < n; ++x) out[x] = w_lo * a[x] + w_hi * b[x];
}

// Rows per task: enough work (~16K output values) to be worth a thread.
int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width)); }

// 'local' weighting: each window's mean of S (summed in double: exact for a constant S, whatever
// the order), times the stage's scale, and the floor, for samples first..first+count-1. `pooled`
// is (count, ny, nx).
void window_means(const StageView& s, int64_t B, int64_t first, int64_t count, int64_t ny,
                  int64_t nx, const float* scales, float* pooled, float* floors) {
  at::parallel_for(0, count * ny, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(s.W);
    std::vector<double> sums(nx);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = first + task / ny, wy = task % ny;
      const int64_t y0 = pool_begin(wy, s.H, ny), y1 = pool_end(wy, s.H, ny);
      std::fill(sums.begin(), sums.end(), 0.0);
      for (int64_t y = y0; y < y1; ++y) {
        const float* row = channel_sum_row(s, B, b, y, scratch.data());
        for (int64_t wx = 0; wx < nx; ++wx) {
          const int64_t x0 = pool_begin(wx, s.W, nx), x1 = pool_end(wx, s.W, nx);
          double acc = 0.0;
#pragma omp simd reduction(+ : acc)
          for (int64_t x = x0; x < x1; ++x) acc += row[x];
          sums[wx] += acc;
        }
      }
      for (int64_t wx = 0; wx < nx; ++wx) {
        const int64_t cells = (y1 - y0) * (pool_end(wx, s.W, nx) - pool_begin(wx, s.W, nx));
        // The mean of the scaled S, exactly: scaling by a power of two commutes with the sum.
        pooled[task * nx + wx] =
            static_cast<float>(sums[wx] / static_cast<double>(cells)) * scales[task / ny];
      }
    }
  });
  for (int64_t i = 0; i < count; ++i) {
    const float* p = pooled + i * ny * nx;
    const float top = *std::max_element(p, p + ny * nx);
    floors[i] = std::max(top * kLocalFloor, kMinFloor);
  }
}

// One GE step for samples first..first+count-1: dst = bilinear(g) × g_scale × S' / weight, or
// × S' / (local mean + floor), S' = S × scale. g, dst and the per-sample arrays start at sample
// `first`.
struct StepArgs {
  const StageView& stage;
  int64_t B, first, count;
  const float* g;
  int64_t gh, gw;
  const float* g_scales;  // per sample: the heatmap's scale on the first step, or nullptr
  const float* scales;    // per sample: the stage's scale (1 on a dead stage)
  const float* weights;   // per sample: 0 for a dead stage, else M × scale (global) or 1 (local)
  const float* pooled;   // (count, ny, nx) window means, or nullptr (global weighting)
  const float* floors;
  int64_t ny, nx;
  float* dst;
};

void step(const StepArgs& a) {
  const StageView& s = a.stage;
  const int64_t H = s.H, W = s.W;
  const AxisTaps g_columns(a.gw, W);
  const AxisTaps pooled_columns(a.pooled ? a.nx : 1, W);
  at::parallel_for(0, a.count * H, row_grain(W), [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(W), up(W), local_mean(W);
    RowCache g_rows(g_columns), pooled_rows(pooled_columns);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / H, y = task % H;
      float* o = a.dst + task * W;
      const float weight = a.weights[i];
      if (weight == 0.f) {
        std::fill(o, o + W, 0.f);
        continue;
      }
      const float* channel_sum = channel_sum_row(s, a.B, a.first + i, y, scratch.data());
      const BilinearTap ty = bilinear_tap(y, a.gh, H);
      const float* g = a.g + i * a.gh * a.gw;
      blend_rows(g_rows.get(i * a.gh + ty.lo, g + ty.lo * a.gw),
                 g_rows.get(i * a.gh + ty.hi, g + ty.hi * a.gw), ty.w_lo, ty.w_hi, W, up.data());
      if (a.g_scales != nullptr) {
        const float gs = a.g_scales[i];
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) up[x] *= gs;
      }
      const float* u = up.data();
      const float ss = a.scales[i];
      if (a.pooled != nullptr) {
        const BilinearTap py = bilinear_tap(y, a.ny, H);
        const float* p = a.pooled + i * a.ny * a.nx;
        blend_rows(pooled_rows.get(i * a.ny + py.lo, p + py.lo * a.nx),
                   pooled_rows.get(i * a.ny + py.hi, p + py.hi * a.nx), py.w_lo, py.w_hi, W,
                   local_mean.data());
        const float floor = a.floors[i];
        const float* lm = local_mean.data();
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) o[x] = u[x] * ((channel_sum[x] * ss) / (lm[x] + floor));
      } else {
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) o[x] = u[x] * (channel_sum[x] * ss) / weight;
      }
    }
  });
}

// Running statistics of one row of the output (NaN-aware min/max, sum in double).
struct RowStats {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  double sum = 0.0;
  int nans = 0;
};

// The sum only where the mean is needed (standardising): it is the one double per value.
template <bool kSum>
RowStats row_stats(const float* o, int64_t n) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  double sum = 0.0;
  int nans = 0;
  if constexpr (kSum) {
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(+ : sum, nans)
    for (int64_t x = 0; x < n; ++x) {
      const float v = o[x];
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
      sum += v;
      nans += v != v;
    }
  } else {
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(+ : nans)
    for (int64_t x = 0; x < n; ++x) {
      const float v = o[x];
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
      nans += v != v;
    }
  }
  return {lo, hi, sum, nans};
}

// In place: f applied to a row, one loop per mode so that each is plain vector arithmetic.
void normalize_row(const Normalizer& f, float* o, int64_t n) {
  if (f.mode == 1) {
    const float lo = f.lo, span = f.span;
#pragma omp simd
    for (int64_t x = 0; x < n; ++x) o[x] = (o[x] - lo) / span;
  } else if (f.mode == 2) {
    const float mean = f.mean, std = f.std, z_lo = f.z_lo, span = f.span;
#pragma omp simd
    for (int64_t x = 0; x < n; ++x) {
      float z = (o[x] - mean) / std;
      z = z < -1.f ? -1.f : (z > 1.f ? 1.f : z);
      o[x] = (z - z_lo) / span;
    }
  } else {
    std::fill(o, o + n, 0.f);
  }
}

// What one call of the op works on.
struct ChainInputs {
  const float* heatmap;
  int64_t B, h0, w0;
  std::vector<StageView> stages;
  int64_t largest;  // positions of the largest stage
  bool local;
  int64_t ny, nx;
  Normalize how;
  float* out;
  int64_t Ho, Wo;
};

// The whole chain for samples first..first+count-1. Its phases split their rows over the threads
// (ATen runs them inline when the caller is itself one task of a parallel loop over samples).
void run_chain(const ChainInputs& in, int64_t first, int64_t count) {
  const int64_t Ho = in.Ho, Wo = in.Wo, K = static_cast<int64_t>(in.stages.size());
  float* out = in.out + first * Ho * Wo;
  std::vector<float> buffers[2] = {std::vector<float>(count * in.largest),
                                   std::vector<float>(count * in.largest)};
  std::vector<float> pooled(in.local ? count * in.ny * in.nx : 0), floors(count), weights(count);
  std::vector<float> scales(count);

  // The map so far: the heatmap, then each stage's result (the shallowest goes straight into
  // `out` when no resize follows). The heatmap is read times its scale (pow2_shift).
  const float* g = in.heatmap + first * in.h0 * in.w0;
  int64_t gh = in.h0, gw = in.w0;
  std::vector<int> g_shifts(count);
  std::vector<float> g_scales(count);
  for (int64_t i = 0; i < count; ++i) {
    float largest = 0.f;
    for (int64_t p = 0; p < in.h0 * in.w0; ++p) largest = finite_magnitude(largest, g[i * in.h0 * in.w0 + p]);
    g_shifts[i] = pow2_shift(largest);
    g_scales[i] = pow2(g_shifts[i]);
  }
  const float* pending_scales = g_scales.data();  // the heatmap's, until a step applies them
  for (int64_t k = K - 1; k >= 0; --k) {
    const StageView& s = in.stages[k];
    for (int64_t i = 0; i < count; ++i) {
      const float top = stage_max(s, first + i);
      scales[i] = pow2(stage_shift(top));
      // 0 marks a dead stage; the local weighting replaces M by 1 on live ones.
      weights[i] = stage_is_live(top) ? (in.local ? 1.f : top * scales[i]) : 0.f;
    }
    if (in.local) {
      window_means(s, in.B, first, count, in.ny, in.nx, scales.data(), pooled.data(),
                   floors.data());
    }
    float* dst = (k == 0 && s.H == Ho && s.W == Wo) ? out : buffers[k % 2].data();
    step({s, in.B, first, count, g, gh, gw, pending_scales, scales.data(), weights.data(),
          in.local ? pooled.data() : nullptr, floors.data(), in.ny, in.nx, dst});
    pending_scales = nullptr;
    g = dst;
    gh = s.H;
    gw = s.W;
  }

  // The resize to the output size (a copy when the sizes agree), with each row's statistics.
  const Normalize how = in.how;
  std::vector<RowStats> rows(how == Normalize::kNone ? 0 : count * Ho);
  const AxisTaps out_columns(gw, Wo);
  at::parallel_for(0, count * Ho, row_grain(Wo), [&](int64_t begin, int64_t end) {
    RowCache g_rows(out_columns);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / Ho, y = task % Ho;
      float* o = out + task * Wo;
      if (g == out) {
        // the shallowest stage wrote the output
      } else if (gh == Ho && gw == Wo) {
        std::copy(g + task * Wo, g + (task + 1) * Wo, o);
      } else {
        const BilinearTap ty = bilinear_tap(y, gh, Ho);
        const float* sample = g + i * gh * gw;
        blend_rows(g_rows.get(i * gh + ty.lo, sample + ty.lo * gw),
                   g_rows.get(i * gh + ty.hi, sample + ty.hi * gw), ty.w_lo, ty.w_hi, Wo, o);
      }
      if (pending_scales != nullptr) {  // no stage: the map is the (resized) heatmap
        const float gs = pending_scales[i];
        for (int64_t x = 0; x < Wo; ++x) o[x] *= gs;
      }
      if (how == Normalize::kNone) {  // the raw map: the heatmap's scale back
        const int shift = g_shifts[i];
        for (int64_t x = 0; x < Wo; ++x) o[x] = unscale(o[x], shift);
      }
      if (!rows.empty()) {
        rows[task] = how == Normalize::kStandardize ? row_stats<true>(o, Wo) : row_stats<false>(o, Wo);
      }
    }
  });
  if (how == Normalize::kNone) return;

  // Per sample: the rows' statistics combined; then the spread around the mean (standardising).
  const int64_t n = Ho * Wo;
  std::vector<RowStats> samples(count);
  for (int64_t i = 0; i < count; ++i) {
    RowStats& all = samples[i];
    for (int64_t y = 0; y < Ho; ++y) {
      const RowStats& r = rows[i * Ho + y];
      all.nans += r.nans;
      all.lo = std::min(all.lo, r.lo);
      all.hi = std::max(all.hi, r.hi);
      all.sum += r.sum;
    }
  }
  std::vector<double> squares(how == Normalize::kStandardize ? count * Ho : 0);
  if (!squares.empty()) {
    at::parallel_for(0, count * Ho, row_grain(Wo), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const double mean = samples[task / Ho].sum / static_cast<double>(n);
        const float* o = out + task * Wo;
        double acc = 0.0;
#pragma omp simd reduction(+ : acc)
        for (int64_t x = 0; x < Wo; ++x) acc += (o[x] - mean) * (o[x] - mean);
        squares[task] = acc;
      }
    });
  }
  std::vector<Normalizer> normalizers(count);
  for (int64_t i = 0; i < count; ++i) {
    double spread = 0.0;
    for (int64_t y = 0; y < Ho && !squares.empty(); ++y) spread += squares[i * Ho + y];
    const RowStats& all = samples[i];
    normalizers[i] = make_normalizer(how, all.lo, all.hi, all.nans > 0, n, all.sum, spread);
  }
  at::parallel_for(0, count * Ho, row_grain(Wo), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      normalize_row(normalizers[task / Ho], out + task * Wo, Wo);
    }
  });
}

}  // namespace

at::Tensor extrapolate_chain(const at::Tensor& heatmap_in, at::TensorList sums_in,
                             at::TensorList maxima_in, at::IntArrayRef windows,
                             at::IntArrayRef output_size, bool local, int64_t normalize) {
  const at::Tensor heatmap = heatmap_in.contiguous();
  const int64_t B = heatmap.size(0), K = static_cast<int64_t>(sums_in.size());
  at::Tensor out = at::empty({B, 1, output_size[0], output_size[1]}, heatmap.options());
  if (B == 0) return out;

  ChainInputs in{heatmap.const_data_ptr<float>(), B, heatmap.size(2), heatmap.size(3), {}, 0,
                 local, windows[0], windows[1], static_cast<Normalize>(normalize),
                 out.mutable_data_ptr<float>(), output_size[0], output_size[1]};
  std::vector<at::Tensor> keep;  // contiguous copies where needed, alive for the whole call
  for (int64_t k = 0; k < K; ++k) {
    keep.push_back(sums_in[k].contiguous());
    keep.push_back(maxima_in[k].contiguous());
    const at::Tensor& s = keep[keep.size() - 2];
    const at::Tensor& m = keep.back();
    in.stages.push_back({s.const_data_ptr<float>(), s.size(0), m.const_data_ptr<float>(),
                         m.size(1), s.size(3), s.size(4)});
    in.largest = std::max(in.largest, s.size(3) * s.size(4));
  }
  // With a sample for every thread, each thread walks whole samples: no phase waits for the
  // others (a dozen barriers per call otherwise). A smaller batch splits each phase's rows.
  if (B >= at::get_num_threads()) {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) { run_chain(in, begin, end - begin); });
  } else {
    run_chain(in, 0, B);
  }
  return out;
}

}  // namespace GRADEX_CPU_ISA
}  // namespace cpu
}  // namespace gradex

// The gradex ops: schemas (one place for every backend) and the argument checks they share.
//
// Gradual Extrapolation (DESIGN.md §1) in two ops, per sample b:
//   reduce_stage(A, transform, splits, chunks) -> (sums, maxima)
//       one read of a stage activation A (B,C,H,W), t(A) with t: none|relu|abs, as partials:
//       sums (splits,B,1,H,W) fp32 whose sum over dim 0 is S = Σ_c t(A)[b,c], and maxima
//       (B, splits*chunks) fp32 whose max is M = max(0, max t(A)[b]), NaN where S holds a NaN.
//       A kernel writes one part per block it runs (channel split × position chunk), so nothing
//       is zeroed first and nothing is combined by atomics: one launch, and the same S on every
//       run. Any implementation may put everything in the first part and zeros in the others.
//   extrapolate_chain(heatmap, sums[], maxima[], windows, output_size, local, normalize) -> map
//       everything after the reductions: for the stages deepest first, the 'local' weighting
//       (S over its bilinearly blended mean on windows×windows cells, floored) or the global one
//       (S / M), bilinear upsampling of the map times the weighted S (zeros on a dead stage), the
//       resize to output_size, and the normalisation (0 none, 1 min-max, 2 standardise), with a
//       map constant up to rounding normalised to zeros.
// Kernels: cpu/ and cuda/; fake (meta) versions in gradex/_ext.py; the oracle is
// gradex/reference.py.
#include <Python.h>
#include <torch/library.h>

#include "stage_ops.h"

namespace gradex {

void check_reduce_stage_args(const at::Tensor& activation, int64_t transform, int64_t splits,
                             int64_t chunks) {
  TORCH_CHECK(activation.dim() == 4, "gradex::reduce_stage: activation must be (B,C,H,W), got ",
              activation.dim(), " dims");
  const auto dtype = activation.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                  dtype == at::kDouble,
              "gradex::reduce_stage: activation must be float32, float16, bfloat16 or float64, "
              "got ", dtype);
  TORCH_CHECK(activation.size(0) == 0 ||
                  (activation.size(1) > 0 && activation.size(2) > 0 && activation.size(3) > 0),
              "gradex::reduce_stage: activation must not be empty, got ", activation.sizes());
  TORCH_CHECK(transform >= 0 && transform <= 2,
              "gradex::reduce_stage: transform must be 0 (none), 1 (relu) or 2 (abs), got ",
              transform);
  TORCH_CHECK(splits >= 1 && chunks >= 1,
              "gradex::reduce_stage: splits and chunks must be >= 1, got ", splits, " and ",
              chunks);
}

void check_chain_args(const at::Tensor& heatmap, at::TensorList sums, at::TensorList maxima,
                      at::IntArrayRef windows, at::IntArrayRef output_size, int64_t normalize) {
  TORCH_CHECK(heatmap.dim() == 4 && heatmap.size(1) == 1 && heatmap.scalar_type() == at::kFloat,
              "gradex::extrapolate_chain: heatmap must be a (B,1,h,w) float32 map, got ",
              heatmap.scalar_type(), " ", heatmap.sizes());
  const int64_t batch = heatmap.size(0);
  TORCH_CHECK(batch == 0 || (heatmap.size(2) > 0 && heatmap.size(3) > 0),
              "gradex::extrapolate_chain: heatmap must not be empty, got ", heatmap.sizes());
  TORCH_CHECK(sums.size() == maxima.size(),
              "gradex::extrapolate_chain: sums and maxima must have one entry per stage, got ",
              sums.size(), " and ", maxima.size());
  for (size_t k = 0; k < sums.size(); ++k) {
    const at::Tensor& s = sums[k];
    const at::Tensor& m = maxima[k];
    TORCH_CHECK(s.dim() == 5 && s.size(0) >= 1 && s.size(1) == batch && s.size(2) == 1 &&
                    s.scalar_type() == at::kFloat,
                "gradex::extrapolate_chain: sums[", k, "] must be (n,B,1,H,W) float32 with B=",
                batch, ", got ", s.scalar_type(), " ", s.sizes());
    TORCH_CHECK(batch == 0 || (s.size(3) > 0 && s.size(4) > 0),
                "gradex::extrapolate_chain: sums[", k, "] must not be empty, got ", s.sizes());
    TORCH_CHECK(m.dim() == 2 && m.size(0) == batch && m.size(1) >= 1 &&
                    m.scalar_type() == at::kFloat,
                "gradex::extrapolate_chain: maxima[", k, "] must be (B,m) float32 with B=", batch,
                ", got ", m.scalar_type(), " ", m.sizes());
    TORCH_CHECK(s.device() == heatmap.device() && m.device() == heatmap.device(),
                "gradex::extrapolate_chain: sums[", k, "] and maxima[", k,
                "] must be on the heatmap's device, ", heatmap.device());
  }
  TORCH_CHECK(windows.size() == 2 && windows[0] >= 1 && windows[1] >= 1,
              "gradex::extrapolate_chain: windows must be two positive ints, got ", windows);
  TORCH_CHECK(output_size.size() == 2 && output_size[0] >= 1 && output_size[1] >= 1,
              "gradex::extrapolate_chain: output_size must be two positive ints, got ",
              output_size);
  TORCH_CHECK(normalize >= 0 && normalize <= 2,
              "gradex::extrapolate_chain: normalize must be 0 (none), 1 (min-max) or 2 "
              "(standardize), got ", normalize);
}

TORCH_LIBRARY(gradex, m) {
  m.def("reduce_stage(Tensor activation, int transform, int splits, int chunks) -> (Tensor, Tensor)");
  m.def(
      "extrapolate_chain(Tensor heatmap, Tensor[] sums, Tensor[] maxima, int[2] windows, "
      "int[2] output_size, bool local, int normalize) -> Tensor");
}

}  // namespace gradex

// `import gradex._C` loads this library, which registers the ops above; the module itself is
// empty (the ops are reached through torch.ops.gradex).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "gradex's compiled kernels (see torch.ops.gradex)", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}

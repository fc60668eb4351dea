// The gradex ops: schemas (one place for every backend) and the argument checks they share.
//
// The three primitives of Gradual Extrapolation (DESIGN.md §1), per sample b:
//   reduce_stage(A, transform) -> (S, M)   S = Σ_c t(A)[b,c] (B,1,H,W) fp32, M = max(0, max t(A)[b])
//                                          (B,) fp32, NaN where S holds a NaN; t: none|relu|abs
//   upsample_multiply(g, S, M)  -> bilinear(g to S's size) * S / M, zeros where M is not a
//                                          positive finite number (a dead stage)
//   normalize_maps(g)           -> clip((g - mean) / std, -1, 1) min-maxed to [0, 1], zeros for a
//                                          constant map
// Kernels: cpu/stage_ops_cpu.cpp and cuda/stage_ops_cuda.cu; fake (meta) versions in
// gradex/_ext.py; the oracle is gradex/reference.py.
#include <Python.h>
#include <torch/library.h>

#include "stage_ops.h"

namespace gradex {

void check_reduce_stage_args(const at::Tensor& activation, int64_t transform) {
  TORCH_CHECK(activation.dim() == 4, "gradex::reduce_stage: activation must be (B,C,H,W), got ",
              activation.dim(), " dims");
  const auto dtype = activation.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "gradex::reduce_stage: activation must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(activation.size(0) == 0 ||
                  (activation.size(1) > 0 && activation.size(2) > 0 && activation.size(3) > 0),
              "gradex::reduce_stage: activation must not be empty, got ", activation.sizes());
  TORCH_CHECK(transform >= 0 && transform <= 2,
              "gradex::reduce_stage: transform must be 0 (none), 1 (relu) or 2 (abs), got ",
              transform);
}

void check_upsample_multiply_args(const at::Tensor& g, const at::Tensor& channel_sum,
                                  const at::Tensor& sample_max) {
  TORCH_CHECK(g.dim() == 4 && g.size(1) == 1 && g.scalar_type() == at::kFloat,
              "gradex::upsample_multiply: g must be a (B,1,h,w) float32 map, got ",
              g.scalar_type(), " ", g.sizes());
  TORCH_CHECK(channel_sum.dim() == 4 && channel_sum.size(1) == 1 &&
                  channel_sum.scalar_type() == at::kFloat,
              "gradex::upsample_multiply: channel_sum must be a (B,1,H,W) float32 map, got ",
              channel_sum.scalar_type(), " ", channel_sum.sizes());
  TORCH_CHECK(sample_max.dim() == 1 && sample_max.scalar_type() == at::kFloat,
              "gradex::upsample_multiply: sample_max must be a (B,) float32 vector, got ",
              sample_max.scalar_type(), " ", sample_max.sizes());
  TORCH_CHECK(g.size(0) == channel_sum.size(0) && g.size(0) == sample_max.size(0),
              "gradex::upsample_multiply: g, channel_sum and sample_max must share the batch size, "
              "got ", g.size(0), ", ", channel_sum.size(0), " and ", sample_max.size(0));
  TORCH_CHECK(g.size(0) == 0 || (g.size(2) > 0 && g.size(3) > 0 && channel_sum.size(2) > 0 &&
                                 channel_sum.size(3) > 0),
              "gradex::upsample_multiply: maps must not be empty");
  TORCH_CHECK(g.device() == channel_sum.device() && g.device() == sample_max.device(),
              "gradex::upsample_multiply: g, channel_sum and sample_max must be on one device");
}

void check_normalize_maps_args(const at::Tensor& g) {
  TORCH_CHECK(g.dim() == 4 && g.size(1) == 1 && g.scalar_type() == at::kFloat,
              "gradex::normalize_maps: g must be a (B,1,H,W) float32 map, got ", g.scalar_type(),
              " ", g.sizes());
}

TORCH_LIBRARY(gradex, m) {
  m.def("reduce_stage(Tensor activation, int transform) -> (Tensor, Tensor)");
  m.def("upsample_multiply(Tensor g, Tensor channel_sum, Tensor sample_max) -> Tensor");
  m.def("normalize_maps(Tensor g) -> Tensor");
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

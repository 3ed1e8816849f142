// The hydra ops: schemas and the autocast rule. Kernels: hydra_linear.cpp (CPU and
// CUDA, over the low-rank engine); autograd: hydra_autograd.cpp; fakes and the
// Python wrapper: python/peftcore/ops/hydra.py.
#include <torch/library.h>

#include "common/autocast.h"
#include "hydra/hydra_schema.h"

using namespace peftcore;  // op names, signatures, impl_autocast

TORCH_LIBRARY_FRAGMENT(peftcore, m) {
  // Hydra: h = x W^T + b; y = h + s_p (drop(x) A_p^T) B_p^T + s_s (drop(h) A_s^T) B_s^T.
  // Either branch may be absent (its A and B None). Saved for backward: x, h and
  // the two N x r hiddens; the masks of x and h come from dropout_seed (h's from
  // the seed's second stream).
  m.def(
      "hydra_linear(Tensor x, Tensor weight, Tensor? bias, Tensor? A_p, Tensor? B_p, Tensor? A_s, "
      "Tensor? B_s, float scale_p, float scale_s, float dropout_p, Tensor? dropout_seed) -> "
      "(Tensor out, Tensor h, Tensor hidden_p, Tensor hidden_s)");
  // h (the base output, [N, out]) is returned, and read by backward, only with dropout:
  // without it backward rewrites T_s^T h as (T_s^T x) W^T + colsum(T_s) b^T, so h is
  // empty ([0]) and costs neither memory nor a copy.
  // output_mask selects (x, weight, bias, A_p, B_p, A_s, B_s).
  m.def(
      "hydra_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor h, Tensor? A_p, "
      "Tensor? B_p, Tensor? A_s, Tensor? B_s, Tensor hidden_p, Tensor hidden_s, float scale_p, "
      "float scale_s, float dropout_p, Tensor? dropout_seed, bool[7] output_mask) -> (Tensor grad_x, "
      "Tensor grad_weight, Tensor grad_bias, Tensor grad_A_p, Tensor grad_B_p, Tensor grad_A_s, "
      "Tensor grad_B_s)");
}

TORCH_LIBRARY_IMPL(peftcore, AutocastCPU, m) { impl_autocast<kCPU, kHydraLinear, HydraLinearSig>(m); }
TORCH_LIBRARY_IMPL(peftcore, AutocastCUDA, m) { impl_autocast<kCUDA, kHydraLinear, HydraLinearSig>(m); }

// The fused Hydra linear. With dropout it is built from the LoRA backends' skinny
// primitives (lora/lora_compose.h): one large GEMM for h, the parallel branch on x
// and the sequential branch on h; backward folds the sequential branch into the
// gradient of h first, so dx = G_h W + m_x∘(T_p A_p) needs one large GEMM.
// Without dropout both branches go through ATen GEMMs with their factors
// concatenated, and h is neither saved nor copied; in float32/float64 at large N the
// branches fold into the weight (W'' = W + s_p B_p A_p + s_s B_s A_s W, the merge) so
// that forward and dx are single GEMMs (see hydra_compose.cpp).
//   G_h = G + m_h∘(T_s A_s),  T_s = s_s' G B_s,  T_p = s_p' G B_p
//   dB_p = G^T hidden_p, dA_p = T_p^T (m_x∘x), dB_s = G^T hidden_s, dA_s = T_s^T (m_h∘h)
//   dW = G_h^T x, db = Σ_rows G_h
#pragma once

#include <array>

#include "lora/lora_compose.h"

namespace peftcore {

using HydraForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using HydraBackward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

HydraForward hydra_forward(const LoraSkinnyOps& ops, const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& A_p,
                           const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& A_s,
                           const std::optional<at::Tensor>& B_s, double scale_p, double scale_s,
                           double dropout_p, const std::optional<at::Tensor>& dropout_seed);

HydraBackward hydra_backward(const LoraSkinnyOps& ops, const at::Tensor& grad_out, const at::Tensor& x,
                             const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& h,
                             const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                             const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s,
                             const at::Tensor& hidden_p, const at::Tensor& hidden_s, double scale_p,
                             double scale_s, double dropout_p,
                             const std::optional<at::Tensor>& dropout_seed, std::array<bool, 7> output_mask);

template <const LoraSkinnyOps& Ops>
HydraForward hydra_linear_kernel(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& A_p,
                                 const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& A_s,
                                 const std::optional<at::Tensor>& B_s, double scale_p, double scale_s,
                                 double dropout_p, const std::optional<at::Tensor>& dropout_seed) {
  return hydra_forward(Ops, x, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s, dropout_p, dropout_seed);
}

template <const LoraSkinnyOps& Ops>
HydraBackward hydra_linear_backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& h, const std::optional<at::Tensor>& A_p,
    const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s, const at::Tensor& hidden_p,
    const at::Tensor& hidden_s, double scale_p, double scale_s, double dropout_p,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 7> output_mask) {
  return hydra_backward(Ops, grad_out, x, weight, bias, h, A_p, B_p, A_s, B_s, hidden_p, hidden_s, scale_p,
                        scale_s, dropout_p, dropout_seed, output_mask);
}

template <const LoraSkinnyOps& Ops, typename Library>
void register_hydra_kernels(Library& m) {
  m.impl("hydra_linear", &hydra_linear_kernel<Ops>);
  m.impl("hydra_linear_backward", &hydra_linear_backward_kernel<Ops>);
}

}  // namespace peftcore

#include "lora/lora_compose.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include "lora/lora_checks.h"

namespace peftcore {
namespace {

DropoutSpec make_spec(double p, const std::optional<at::Tensor>& seed) {
  DropoutSpec spec;
  spec.p = p;
  if (p > 0.0) spec.seed = *seed;
  return spec;
}

at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> lora_forward(const LoraSkinnyOps& ops, const at::Tensor& x,
                                                const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias,
                                                const at::Tensor& lora_A,
                                                const at::Tensor& lora_B, double scaling,
                                                double dropout_p,
                                                const std::optional<at::Tensor>& dropout_seed) {
  const LoraDims d = check_lora_forward(x, weight, bias, lora_A, lora_B, dropout_p, dropout_seed);
  const DropoutSpec spec = make_spec(dropout_p, dropout_seed);
  const at::Tensor x2 = x.reshape({d.rows, d.in});

  at::Tensor hidden = ops.shrink(x2, lora_A, scaling / (1.0 - dropout_p),
                                 spec.active() ? &spec : nullptr);
  at::Tensor y = (bias.has_value() && bias->defined()) ? at::addmm(*bias, x2, weight.t())
                                                       : at::mm(x2, weight.t());
  if (!y.is_contiguous()) y = y.contiguous();
  ops.expand_add_(y, hidden, lora_B, nullptr);
  return {y.view(with_last_dim(x, d.out)), hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_backward(
    const LoraSkinnyOps& ops, const at::Tensor& grad_out, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
    const at::Tensor& lora_hidden, double scaling, double dropout_p,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 5> output_mask) {
  const LoraDims d = check_lora_backward(grad_out, x, weight, lora_A, lora_B, lora_hidden,
                                         dropout_p, dropout_seed);
  const DropoutSpec spec = make_spec(dropout_p, dropout_seed);
  const DropoutSpec* mask = spec.active() ? &spec : nullptr;
  const at::Tensor g2 = grad_out.reshape({d.rows, d.out});
  const bool need_t = output_mask[0] || output_mask[3];

  // T = s' G B: the only N x r intermediate of the backward.
  const at::Tensor t =
      need_t ? ops.shrink(g2, lora_B.t(), scaling / (1.0 - dropout_p), nullptr) : at::Tensor();

  at::Tensor grad_x = empty_grad(x);
  if (output_mask[0]) {
    grad_x = at::mm(g2, weight);
    if (!grad_x.is_contiguous()) grad_x = grad_x.contiguous();
    ops.expand_add_(grad_x, t, lora_A.t(), mask);
    grad_x = grad_x.view(x.sizes());
  }
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const at::Tensor grad_w = output_mask[1] ? at::mm(g2.t(), x2) : empty_grad(x);
  const at::Tensor grad_b = output_mask[2] ? at::sum(g2, {0}) : empty_grad(x);
  const at::Tensor grad_a = output_mask[3] ? ops.reduce(t, x2, mask) : empty_grad(x);
  const at::Tensor grad_bb =
      output_mask[4] ? ops.reduce(lora_hidden, g2, nullptr).t().contiguous() : empty_grad(x);
  return {grad_x, grad_w, grad_b, grad_a, grad_bb};
}

}  // namespace peftcore

#include "hydra/hydra_compose.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <c10/core/DeviceGuard.h>

#include "hydra/hydra_checks.h"
#include "lora/lora_checks.h"

namespace peftcore {
namespace {

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The masks of x and of h: two streams of the same seed (the second key is seed[0] + 1).
struct HydraDropout {
  std::optional<DropoutSpec> x, h;
  HydraDropout(double p, const std::optional<at::Tensor>& seed) {
    if (p == 0.0) return;
    x = DropoutSpec{p, *seed};
    at::Tensor shifted = seed->clone();
    shifted.narrow(0, 0, 1).add_(1);
    h = DropoutSpec{p, shifted};
  }
};

const DropoutSpec* ptr(const std::optional<DropoutSpec>& s) { return s.has_value() ? &*s : nullptr; }

at::Tensor no_hidden(const at::Tensor& x, int64_t rows) { return at::empty({rows, 0}, x.options()); }

at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace

HydraForward hydra_forward(const LoraSkinnyOps& ops, const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& A_p,
                           const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& A_s,
                           const std::optional<at::Tensor>& B_s, double scale_p, double scale_s,
                           double dropout_p, const std::optional<at::Tensor>& dropout_seed) {
  const HydraDims d = check_hydra_forward(x, weight, bias, A_p, B_p, A_s, B_s, dropout_p, dropout_seed);
  const c10::OptionalDeviceGuard guard(x.device());
  const HydraDropout drop(dropout_p, dropout_seed);
  const double keep = 1.0 - dropout_p;
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  at::Tensor h = present(bias) ? at::addmm(*bias, x2, weight.t()) : at::mm(x2, weight.t());
  if (!h.is_contiguous()) h = h.contiguous();
  at::Tensor y = h.clone();
  at::Tensor hidden_p = no_hidden(x, d.rows), hidden_s = no_hidden(x, d.rows);
  if (d.rank_p > 0) {
    hidden_p = ops.shrink(x2, *A_p, scale_p / keep, ptr(drop.x));
    ops.expand_add_(y, hidden_p, *B_p);
  }
  if (d.rank_s > 0) {
    hidden_s = ops.shrink(h, *A_s, scale_s / keep, ptr(drop.h));
    ops.expand_add_(y, hidden_s, *B_s);
  }
  return {y.view(with_last_dim(x, d.out)), h, hidden_p, hidden_s};
}

HydraBackward hydra_backward(const LoraSkinnyOps& ops, const at::Tensor& grad_out, const at::Tensor& x,
                             const at::Tensor& weight, const at::Tensor& h,
                             const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                             const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s,
                             const at::Tensor& hidden_p, const at::Tensor& hidden_s, double scale_p,
                             double scale_s, double dropout_p,
                             const std::optional<at::Tensor>& dropout_seed, std::array<bool, 7> output_mask) {
  const HydraDims d = check_hydra_backward(grad_out, x, weight, h, A_p, B_p, A_s, B_s, hidden_p, hidden_s,
                                           dropout_p, dropout_seed);
  const c10::OptionalDeviceGuard guard(x.device());
  const HydraDropout drop(dropout_p, dropout_seed);
  const double keep = 1.0 - dropout_p;
  const at::Tensor g = grad_out.reshape({d.rows, d.out}).contiguous();
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const bool need_gh = output_mask[0] || output_mask[1] || output_mask[2];

  // Sequential branch first: its T_s also gives the gradient that flows into h.
  at::Tensor g_h = g;
  LoraSkinnyGrads seq;
  if (d.rank_s > 0) {
    if (need_gh) g_h = g.clone();
    seq = ops.backward(g, h, hidden_s, *A_s, *B_s, scale_s / keep, ptr(drop.h), need_gh ? &g_h : nullptr,
                       output_mask[5], output_mask[6]);
  }
  at::Tensor grad_x;
  if (output_mask[0]) {
    grad_x = at::mm(g_h, weight);
    if (!grad_x.is_contiguous()) grad_x = grad_x.contiguous();
  }
  LoraSkinnyGrads par;
  if (d.rank_p > 0) {
    par = ops.backward(g, x2, hidden_p, *A_p, *B_p, scale_p / keep, ptr(drop.x),
                       output_mask[0] ? &grad_x : nullptr, output_mask[3], output_mask[4]);
  }
  auto pick = [&](bool wanted, const at::Tensor& t) { return wanted && t.defined() ? t : empty_grad(x); };
  return {
      output_mask[0] ? grad_x.view(x.sizes()) : empty_grad(x),
      output_mask[1] ? at::mm(g_h.t(), x2) : empty_grad(x),
      output_mask[2] ? at::sum(g_h, {0}) : empty_grad(x),
      pick(output_mask[3], par.grad_A),
      pick(output_mask[4], par.grad_B),
      pick(output_mask[5], seq.grad_A),
      pick(output_mask[6], seq.grad_B),
  };
}

}  // namespace peftcore

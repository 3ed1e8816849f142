// The kernels of hydra_linear and hydra_linear_backward, for every backend. With
// dropout they are built from the low-rank engine's passes (lowrank/lowrank.h): one large GEMM for h, the parallel branch on x
// and the sequential branch on h; backward folds the sequential branch into the
// gradient of h first, so dx = G_h W + m_x∘(T_p A_p) needs one large GEMM.
// Without dropout both branches go through ATen GEMMs with their factors
// concatenated, and h is neither saved nor copied; in float32/float64 at large N the
// branches fold into the weight (W'' = W + s_p B_p A_p + s_s B_s A_s W, the merge) so
// that forward and dx are single GEMMs (forward_merged below).
//   G_h = G + m_h∘(T_s A_s),  T_s = s_s' G B_s,  T_p = s_p' G B_p
//   dB_p = G^T hidden_p, dA_p = T_p^T (m_x∘x), dB_s = G^T hidden_s, dA_s = T_s^T (m_h∘h)
//   dW = G_h^T x, db = Σ_rows G_h
#include <ATen/ops/addmm.h>
#include <ATen/ops/addmv.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/sum.h>
#include <c10/core/DeviceGuard.h>

#include <torch/library.h>

#include <array>
#include <tuple>

#include "common/checks.h"
#include "hydra/hydra_checks.h"
#include "common/results.h"
#include "lowrank/lowrank.h"
#include "lowrank/tn_product.h"

namespace peftcore {
namespace {

using HydraForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using HydraBackward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// merged_weight_pays's factor for Hydra (lowrank/lowrank.h): where the merged path
// measured faster than the unmerged one on the CPU (in = out = 1024, r_p = r_s = 8,
// process-alternating A/B, ratio to the frozen base).
constexpr int64_t kHydraMergeFactor = 3;

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

at::Tensor no_hidden(const at::Tensor& x, int64_t rows) { return at::empty({rows, 0}, x.options()); }

// The branches' factors side by side (rank p first): [N, r_p + r_s] or [out, r_p + r_s];
// with dim 0 stacked: [r_p + r_s, in].
at::Tensor side_by_side(const HydraDims& d, const at::Tensor& p, const at::Tensor& s, int64_t dim = 1) {
  if (d.rank_s == 0) return p;
  if (d.rank_p == 0) return s;
  return at::cat({p, s}, dim);
}

// [B_p | B_s]: [out, r_p + r_s].
at::Tensor ups(const HydraDims& d, const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& B_s) {
  return side_by_side(d, d.rank_p ? *B_p : at::Tensor(), d.rank_s ? *B_s : at::Tensor());
}

// The branches folded into the weight (hydra's merge, in float32/float64 when N is
// large: see merged_weight_pays in lowrank/lowrank.h and kHydraMergeFactor):
//   W'' = W + [s_p B_p | s_s B_s] [A_p ; A_s W],  b'' = b + s_s B_s A_s b,
// so y = x W''^T + b'' and dx = G W'' are single GEMMs, and the hidden states come
// from x alone: [hidden_p | hidden_s] = x [A_p ; A_s W]^T, plus s_s (A_s b)^T in hidden_s
// (h A_s^T = x (A_s W)^T + (A_s b)^T). Nothing N x out is read back or added into.
struct MergedHydra {
  at::Tensor weight, bias;  // W'', b'' (undefined without a bias)
  at::Tensor rows;          // [A_p ; A_s W]: [r_p + r_s, in]
  at::Tensor as_bias;       // A_s b: [r_s] (undefined without a bias or a sequential branch)
};

// [s_p B_p | s_s B_s]: [out, r_p + r_s].
at::Tensor scaled_ups(const HydraDims& d, const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& B_s,
                      double scale_p, double scale_s) {
  return side_by_side(d, d.rank_p ? B_p->mul(scale_p) : at::Tensor(), d.rank_s ? B_s->mul(scale_s) : at::Tensor());
}

MergedHydra merge_branches(const HydraDims& d, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                           const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s,
                           double scale_p, double scale_s) {
  MergedHydra m;
  const at::Tensor as_w = d.rank_s ? at::mm(*A_s, weight) : at::Tensor();
  m.rows = side_by_side(d, d.rank_p ? *A_p : at::Tensor(), as_w, 0);
  m.weight = at::addmm(weight, scaled_ups(d, B_p, B_s, scale_p, scale_s), m.rows);
  if (present(bias)) {
    m.bias = *bias;
    if (d.rank_s) {
      m.as_bias = at::mv(*A_s, *bias);
      m.bias = at::addmv(*bias, *B_s, m.as_bias, /*beta=*/1, /*alpha=*/scale_s);
    }
  }
  return m;
}

HydraForward forward_merged(const HydraDims& d, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& A_p,
                            const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& A_s,
                            const std::optional<at::Tensor>& B_s, double scale_p, double scale_s) {
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const MergedHydra m = merge_branches(d, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s);
  at::Tensor y = m.bias.defined() ? at::addmm(m.bias, x2, m.weight.t()) : at::mm(x2, m.weight.t());
  const at::Tensor hidden = at::mm(x2, m.rows.t());  // [N, r_p + r_s]
  at::Tensor hidden_p = no_hidden(x, d.rows), hidden_s = no_hidden(x, d.rows);
  if (d.rank_p > 0) hidden_p = hidden.narrow(1, 0, d.rank_p).mul(scale_p);
  if (d.rank_s > 0) {
    hidden_s = hidden.narrow(1, d.rank_p, d.rank_s);
    hidden_s = m.as_bias.defined() ? hidden_s.add(m.as_bias.unsqueeze(0)).mul_(scale_s) : hidden_s.mul(scale_s);
  }
  y = contiguous_result(y);
  return {y.view(with_last_dim(x, d.out)), at::empty({0}, x.options()), hidden_p, hidden_s};
}

// Without dropout: h is the output buffer itself. hidden_s = s_s h A_s^T is taken
// before the adapters accumulate into it, then both branches add with ONE GEMM:
// y = h + [hidden_p | hidden_s] [B_p | B_s]^T. Nothing N x out is saved.
HydraForward forward_no_dropout(const HydraDims& d, const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& A_p,
                                const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& A_s,
                                const std::optional<at::Tensor>& B_s, double scale_p, double scale_s) {
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  at::Tensor y = present(bias) ? at::addmm(*bias, x2, weight.t()) : at::mm(x2, weight.t());
  y = contiguous_result(y);
  at::Tensor hidden_p = no_hidden(x, d.rows), hidden_s = no_hidden(x, d.rows);
  if (d.rank_p > 0) hidden_p = at::mm(x2, A_p->t()).mul_(scale_p);
  if (d.rank_s > 0) hidden_s = at::mm(y, A_s->t()).mul_(scale_s);
  y.addmm_(side_by_side(d, hidden_p, hidden_s), ups(d, B_p, B_s).t());
  return {y.view(with_last_dim(x, d.out)), at::empty({0}, x.options()), hidden_p, hidden_s};
}

// Without dropout, with T = G [B_p | B_s] scaled per branch (T_p | T_s):
//   dB = G^T [hidden_p | hidden_s],  Q = T^T x,  dA_p = Q_p,
//   dA_s = T_s^T h = Q_s W^T + colsum(T_s) b^T              (h = x W^T + b: not needed)
//   dx = G_h W + T_p A_p = G W + T [A_p ; A_s W]             (G_h = G + T_s A_s: not formed)
//   dW = G_h^T x = G^T x + A_s^T Q_s,  db = colsum(G) + A_s^T colsum(T_s)
HydraBackward backward_no_dropout(const HydraDims& d, const at::Tensor& g, const at::Tensor& x,
                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                                  const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s,
                                  const at::Tensor& hidden_p, const at::Tensor& hidden_s, double scale_p,
                                  double scale_s, std::array<bool, 7> mask) {
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const int64_t rp = d.rank_p, rs = d.rank_s;
  // dx = G W''
  const bool merged = mask[0] && merged_weight_pays(d.rows, d.in, d.out, x.scalar_type(), kHydraMergeFactor);
  const bool need_t = (mask[0] && !merged) || mask[3] || (rs > 0 && (mask[1] || mask[2] || mask[5]));
  const bool need_q = mask[3] || (rs > 0 && (mask[1] || mask[5]));
  const bool need_db = mask[4] || mask[6];
  at::Tensor t, q, db;  // T [N, r_p + r_s], Q = T^T x [r_p + r_s, in], dB [out, r_p + r_s]
  if (need_t && row_block_grads_fit(x)) {
    // One pass over G for T and dB (lowrank/tn_product.h), Q from the same row blocks.
    t = at::empty({d.rows, rp + rs}, g.options());
    at::Tensor q_acc = need_q ? at::zeros({rp + rs, d.in}, g.options()) : at::Tensor();
    at::Tensor db_acc = need_db ? at::zeros({rp + rs, d.out}, g.options()) : at::Tensor();
    const at::Tensor b_cols = scaled_ups(d, B_p, B_s, scale_p, scale_s).contiguous();  // [out, r_p + r_s]
    row_block_grads(g, x2, side_by_side(d, hidden_p, hidden_s), b_cols, 1.0, t, need_q ? &q_acc : nullptr,
                    need_db ? &db_acc : nullptr);
    q = q_acc;
    if (need_db) db = db_acc.t();
  } else if (need_t) {
    t = at::mm(g, ups(d, B_p, B_s));
    if (rp > 0) t.narrow(1, 0, rp).mul_(scale_p);
    if (rs > 0) t.narrow(1, rp, rs).mul_(scale_s);
    if (need_q) q = tn_product(t, x2, t.scalar_type());
  }
  if (need_db && !db.defined()) db = tn_product(g, side_by_side(d, hidden_p, hidden_s), g.scalar_type());
  const at::Tensor t_s = (need_t && rs > 0) ? t.narrow(1, rp, rs) : at::Tensor();
  const at::Tensor q_s = (need_q && rs > 0) ? q.narrow(0, rp, rs) : at::Tensor();

  at::Tensor grad_x = empty_grad(x), grad_w = empty_grad(x), grad_b = empty_grad(x);
  at::Tensor grad_ap = empty_grad(x), grad_bp = empty_grad(x), grad_as = empty_grad(x), grad_bs = empty_grad(x);
  if (merged) {
    grad_x = at::mm(g, merge_branches(d, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s).weight).view(x.sizes());
  } else if (mask[0]) {
    // The skinny term first, then the large GEMM adds into it (beta = 1; as in lora/lora_linear.cpp).
    const at::Tensor as_w = rs > 0 ? at::mm(*A_s, weight) : at::Tensor();  // [r_s, in]
    grad_x = at::mm(t, side_by_side(d, rp > 0 ? *A_p : at::Tensor(), as_w, 0));
    grad_x.addmm_(g, weight);
    grad_x = grad_x.view(x.sizes());
  }
  if (mask[1]) {
    grad_w = at::mm(g.t(), x2);
    if (rs > 0) grad_w.addmm_(A_s->t(), q_s);
  }
  if (mask[2]) {
    grad_b = at::sum(g, {0});
    if (rs > 0) grad_b.add_(at::mm(at::sum(t_s, {0}, true), *A_s).squeeze(0));
  }
  if (need_db) {
    if (mask[4]) grad_bp = db.narrow(1, 0, rp).contiguous();
    if (mask[6]) grad_bs = db.narrow(1, rp, rs).contiguous();
  }
  if (mask[3]) grad_ap = q.narrow(0, 0, rp).contiguous();
  if (mask[5]) {
    grad_as = at::mm(q_s, weight.t());  // [r_s, out]
    if (present(bias)) grad_as.addmm_(at::sum(t_s, {0}).unsqueeze(1), bias->unsqueeze(0));  // outer product
  }
  return {grad_x, grad_w, grad_b, grad_ap, grad_bp, grad_as, grad_bs};
}

HydraForward hydra_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                          const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s, double scale_p,
                          double scale_s, double dropout_p, const std::optional<at::Tensor>& dropout_seed) {
  const HydraDims d = check_hydra_forward(x, weight, bias, A_p, B_p, A_s, B_s, dropout_p, dropout_seed);
  const LowRankOps& ops = lowrank_ops(x.device());
  const c10::OptionalDeviceGuard guard(x.device());
  if (dropout_p == 0.0 && merged_weight_pays(d.rows, d.in, d.out, x.scalar_type(), kHydraMergeFactor)) {
    return forward_merged(d, x, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s);
  }
  if (dropout_p == 0.0) return forward_no_dropout(d, x, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s);
  const HydraDropout drop(dropout_p, dropout_seed);
  const double keep = 1.0 - dropout_p;
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  at::Tensor h = present(bias) ? at::addmm(*bias, x2, weight.t()) : at::mm(x2, weight.t());
  if (!h.is_contiguous()) h = h.contiguous();
  at::Tensor y = h.clone();
  at::Tensor hidden_p = no_hidden(x, d.rows), hidden_s = no_hidden(x, d.rows);
  if (d.rank_p > 0) {
    hidden_p = ops.shrink(x2, *A_p, scale_p / keep, spec_ptr(drop.x));
    ops.expand_add_(y, hidden_p, *B_p);
  }
  if (d.rank_s > 0) {
    hidden_s = ops.shrink(h, *A_s, scale_s / keep, spec_ptr(drop.h));
    ops.expand_add_(y, hidden_s, *B_s);
  }
  return {y.view(with_last_dim(x, d.out)), h, hidden_p, hidden_s};
}

HydraBackward hydra_linear_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& h,
                                    const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                                    const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s,
                                    const at::Tensor& hidden_p, const at::Tensor& hidden_s, double scale_p,
                                    double scale_s, double dropout_p, const std::optional<at::Tensor>& dropout_seed,
                                    std::array<bool, 7> output_mask) {
  const HydraDims d = check_hydra_backward(grad_out, x, weight, h, A_p, B_p, A_s, B_s, hidden_p, hidden_s,
                                           dropout_p, dropout_seed);
  const LowRankOps& ops = lowrank_ops(x.device());
  const c10::OptionalDeviceGuard guard(x.device());
  const at::Tensor g = grad_out.reshape({d.rows, d.out}).contiguous();
  if (dropout_p == 0.0) {
    return backward_no_dropout(d, g, x, weight, bias, A_p, B_p, A_s, B_s, hidden_p, hidden_s, scale_p, scale_s,
                               output_mask);
  }
  const HydraDropout drop(dropout_p, dropout_seed);
  const double keep = 1.0 - dropout_p;
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const bool need_gh = output_mask[0] || output_mask[1] || output_mask[2];

  // Sequential branch first: its T_s also gives the gradient that flows into h.
  at::Tensor g_h = g;
  LowRankGrads seq;
  if (d.rank_s > 0) {
    if (need_gh) g_h = g.clone();
    seq = ops.backward(g, h, hidden_s, *A_s, *B_s, scale_s / keep, spec_ptr(drop.h), need_gh ? &g_h : nullptr,
                       output_mask[5], output_mask[6]);
  }
  at::Tensor grad_x;
  if (output_mask[0]) {
    grad_x = at::mm(g_h, weight);
    if (!grad_x.is_contiguous()) grad_x = grad_x.contiguous();
  }
  LowRankGrads par;
  if (d.rank_p > 0) {
    par = ops.backward(g, x2, hidden_p, *A_p, *B_p, scale_p / keep, spec_ptr(drop.x),
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

void impl_hydra(torch::Library& m) {
  m.impl("hydra_linear", &hydra_linear);
  m.impl("hydra_linear_backward", &hydra_linear_backward);
}

}  // namespace

PEFTCORE_LOWRANK_IMPL(impl_hydra)

}  // namespace peftcore

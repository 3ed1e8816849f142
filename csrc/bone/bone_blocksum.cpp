// MiSS bone / mini on any device, over ATen: the block sum of x is a reduction
// (x viewed as [N, in / r, r] summed over the blocks, plus the first in % r columns
// of a last partial block), where the LoRA form would multiply by a 0/1 [r, in]
// matrix, and backward adds T = G up to every block of dx instead of a second such
// GEMM. The adapter's output accumulates into the base GEMM's buffer.
#include <ATen/OpMathType.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "bone/bone_checks.h"
#include "common/checks.h"
#include "common/results.h"
#include "lowrank/tn_product.h"
#include "lowrank/lowrank.h"

namespace peftcore {
namespace {

// h[n, j] = sum over the blocks k of x[n, k r + j] (zero past in): [N, r].
at::Tensor block_sum(const at::Tensor& x2, int64_t r) {
  const int64_t n = x2.size(0), in = x2.size(1), full = in / r, rem = in % r;
  at::Tensor h = full > 0 ? x2.narrow(1, 0, full * r).reshape({n, full, r}).sum(1)
                          : at::zeros({n, r}, x2.options());
  if (rem > 0) h.narrow(1, 0, rem).add_(x2.narrow(1, full * r, rem));
  return h;
}

// dx[n, k r + j] = t[n, j] for every block k: a new contiguous [N, in].
at::Tensor blocks_of(const at::Tensor& t, int64_t in, int64_t r) {
  const int64_t n = t.size(0), full = in / r, rem = in % r;
  at::Tensor dx = at::empty({n, in}, t.options());
  if (full > 0) dx.narrow(1, 0, full * r).view({n, full, r}).copy_(t.unsqueeze(1));
  if (rem > 0) dx.narrow(1, full * r, rem).copy_(t.narrow(1, 0, rem));
  return dx;
}

// W + up S, S the block-sum matrix: up added to every r-column block of W (the
// last partial block takes up's first in % r columns). One out-of-place pass over W
// (a clone and an add in place would be two).
at::Tensor merged_weight(const at::Tensor& weight, const at::Tensor& up, int64_t r) {
  const int64_t out = weight.size(0), in = weight.size(1), full = in / r, rem = in % r;
  at::Tensor w = at::empty({out, in}, weight.options());
  if (full > 0) {
    at::Tensor dst = w.narrow(1, 0, full * r).view({out, full, r});
    at::add_out(dst, weight.narrow(1, 0, full * r).reshape({out, full, r}), up.unsqueeze(1));
  }
  if (rem > 0) {
    at::Tensor dst = w.narrow(1, full * r, rem);
    at::add_out(dst, weight.narrow(1, full * r, rem), up.narrow(1, 0, rem));
  }
  return w;
}

// As lora_linear's merged-weight path (lora/lora_linear.cpp): W + up S rounds once, below
// the GEMM's own rounding in float32/float64, and the out x in pass replaces the
// accumulate into y and, in backward, G up plus the add into every block of dx.
// Factor 2: bone's unmerged path also runs an N x r x out GEMM for the output and one
// for dx (r = 64 by default: 1/16 of the base's FLOPs each), which the merge removes.
bool use_merged_weight(const BoneDims& d, const at::Tensor& x) {
  return merged_weight_pays(d.rows, d.in, d.out, x.scalar_type(), 2);
}

std::tuple<at::Tensor, at::Tensor> bone_linear(const at::Tensor& x, const at::Tensor& weight,
                                               const std::optional<at::Tensor>& bias, const at::Tensor& up,
                                               int64_t r) {
  const BoneDims d = check_bone("bone_linear", x, weight, up, r);
  check_linear_bias("bone_linear", bias, d.out, x);
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const bool merged = use_merged_weight(d, x);
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor hidden = block_sum(x2, r);  // saved for grad_up
  at::Tensor y;
  if (merged) {
    const at::Tensor w = merged_weight(weight, up, r);
    y = has_bias ? at::addmm(*bias, x2, w.t()) : at::mm(x2, w.t());
  } else {
    // The skinny term first, then the large GEMM adds into it (beta = 1): no extra
    // read-modify-write pass over y (as in lora_linear).
    y = has_bias ? at::addmm(*bias, hidden, up.t()) : at::mm(hidden, up.t());
    y.addmm_(x2, weight.t());
  }
  return {contiguous_result(y).view(with_last_dim(x, d.out)), hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bone_linear_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& up,
    const at::Tensor& hidden, int64_t r, std::array<bool, 4> output_mask) {
  const BoneDims d = check_bone("bone_linear_backward", x, weight, up, r);
  check_shape("bone_linear_backward", "grad_out", grad_out, with_last_dim(x, d.out), "[..., out_features]");
  check_same_dtype_device("bone_linear_backward", "grad_out", grad_out, "x", x);
  check_shape("bone_linear_backward", "hidden", hidden, {d.rows, r}, "[N, r]");
  const at::Tensor g = grad_out.reshape({d.rows, d.out});
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  at::Tensor grad_x = empty_grad(x), grad_w = empty_grad(x), grad_b = empty_grad(x), grad_up = empty_grad(x);
  if (output_mask[0]) {
    if (use_merged_weight(d, x)) {
      grad_x = at::mm(g, merged_weight(weight, up, r));
    } else {
      // (G up) written into every block of dx, then the large GEMM adds G W into it.
      grad_x = blocks_of(at::mm(g, up), d.in, r);
      grad_x.addmm_(g, weight);
    }
    grad_x = grad_x.view(x.sizes());
  }
  if (output_mask[1]) grad_w = at::mm(g.t(), x2);
  if (output_mask[2]) grad_b = at::sum(g, {0});
  if (output_mask[3]) {
    // [out, r] = G^T hidden. On the CPU as hidden^T G in row slabs (lowrank/tn_product.h),
    // which ran faster than MKL's whole G^T hidden at N=4096, out=1024, r=64.
    if (x.is_cpu()) {
      grad_up = tn_product(hidden, g, at::toOpMathType(x.scalar_type())).t().contiguous().to(x.scalar_type());
    } else {
      grad_up = at::mm(g.t(), hidden);
    }
  }
  return {grad_x, grad_w, grad_b, grad_up};
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CompositeExplicitAutograd, m) {
  m.impl("bone_linear", &bone_linear);
  m.impl("bone_linear_backward", &bone_linear_backward);
}

}  // namespace peftcore

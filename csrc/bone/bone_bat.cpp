// MiSS "bat" on any device: written once over ATen (GEMMs on MKL / cuBLAS) and
// registered as CompositeExplicitAutograd, with autograd in bone_autograd.cpp.
//
// W' = blockwise W_ij (I + b_i) + b_i is one batched GEMM into a single out x in
// temporary. Backward needs db_i = Σ_j (W_ij + I)^T dW'_ij with dW' = G^T x; it
// takes dW' a band of output rows at a time, contracts the band's r x r tiles with W
// at once (the identity's share is a sum of dW' tiles), and drops it, so the out x
// in weight gradient that HF PEFT's autograd materialises is formed whole only when
// it is small. Band: up to 16M elements of dW' (the op's band_elements) on every
// device. Larger bands run faster (each band's contraction is a batch of r x r
// products with a long inner dimension: narrow bands left bat behind HF PEFT on an
// H200), and the bound keeps the temporary below what PEFT holds at the same point
// (its saved W' plus the whole dW').
#include <ATen/OpMathType.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "bone/bone_checks.h"
#include "common/checks.h"
#include "common/results.h"

namespace peftcore {
namespace {

// Output rows of dW' per band, a multiple of r.
int64_t band_rows(int64_t band_elements, int64_t in, int64_t r) {
  return std::max<int64_t>(1, band_elements / std::max<int64_t>(in, 1) / r) * r;
}

// W'_ij = W_ij (I + b_i) + b_i, as [out, in].
at::Tensor bat_weight_impl(const at::Tensor& weight, const at::Tensor& block) {
  const int64_t out = weight.size(0), in = weight.size(1), r = block.size(-1);
  const int64_t ob = out / r, ib = in / r;
  const at::Tensor grow = block.add(at::eye(r, block.options()));  // I + b_i, [ob, r, r]
  // Rows (a, j) of output block i: [ob, r * ib, r] @ [ob, r, r].
  at::Tensor w = at::matmul(weight.contiguous().view({ob, r * ib, r}), grow);
  w.view({ob, r, ib, r}).add_(block.view({ob, r, 1, r}));
  return w.view({out, in});
}

at::Tensor bone_bat_weight(const at::Tensor& weight, const at::Tensor& block) {
  check_dim("bone_bat_weight", "weight", weight, 2);
  check_bat("bone_bat_weight", at::empty({0, weight.size(1)}, weight.options()), weight, block);
  return bat_weight_impl(weight, block);
}

at::Tensor bone_bat_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const at::Tensor& block) {
  const BoneDims d = check_bat("bone_bat_linear", x, weight, block);
  check_linear_bias("bone_bat_linear", bias, d.out, x);
  const at::Tensor w = bat_weight_impl(weight, block);
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  at::Tensor y = (bias.has_value() && bias->defined()) ? at::addmm(*bias, x2, w.t()) : at::mm(x2, w.t());
  return y.view(with_last_dim(x, d.out));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bone_bat_linear_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& block,
    std::array<bool, 4> output_mask, int64_t band_elements) {
  const BoneDims d = check_bat("bone_bat_linear_backward", x, weight, block);
  TORCH_CHECK(band_elements > 0, "bone_bat_linear_backward: band_elements must be positive, got ", band_elements);
  check_shape("bone_bat_linear_backward", "grad_out", grad_out, with_last_dim(x, d.out), "[..., out_features]");
  check_same_dtype_device("bone_bat_linear_backward", "grad_out", grad_out, "x", x);
  const at::Tensor g = grad_out.reshape({d.rows, d.out});
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  at::Tensor grad_x = empty_grad(x), grad_w = empty_grad(x), grad_b = empty_grad(x), grad_block = empty_grad(x);
  if (output_mask[0]) grad_x = at::mm(g, bat_weight_impl(weight, block)).view(x.sizes());
  if (output_mask[1]) {  // only when the base weight itself trains: dW_ij = dW'_ij (I + b_i)^T
    const int64_t r = d.r, ob = d.out / r;
    const at::Tensor grow = block.add(at::eye(r, block.options()));
    grad_w = at::bmm(at::mm(g.t(), x2).view({ob, r * (d.in / r), r}), grow.transpose(1, 2)).view({d.out, d.in});
  }
  if (output_mask[2]) grad_b = at::sum(g, {0});
  if (output_mask[3]) {
    const int64_t r = d.r, ib = d.in / r, ob = d.out / r;
    grad_block = at::empty({ob, r, r}, block.options().dtype(at::toOpMathType(block.scalar_type())));
    const int64_t band_blocks = band_rows(band_elements, d.in, r) / r;
    for (int64_t i0 = 0; i0 < ob; i0 += band_blocks) {
      const int64_t nb = std::min(band_blocks, ob - i0);
      // dW' for this band of output rows only: [nb * r, in].
      const at::Tensor dw = at::mm(g.narrow(1, i0 * r, nb * r).t(), x2);
      const at::Tensor w_band = weight.narrow(0, i0 * r, nb * r).reshape({nb, r * ib, r});
      // db_i[c, d] = Σ_{a, j} (W + I)[i, a, j, c] dW'[i, a, j, d]
      //            = Σ_{a, j} W[i, a, j, c] dW'[i, a, j, d] + Σ_j dW'[i, c, j, d]
      const at::Tensor identity_part = dw.view({nb, r, ib, r}).sum(2);
      grad_block.narrow(0, i0, nb).copy_(at::baddbmm(identity_part, w_band.transpose(1, 2), dw.view({nb, r * ib, r})));
    }
    grad_block = grad_block.to(block.scalar_type());  // a no-op unless 16-bit
  }
  return {grad_x, grad_w, grad_b, grad_block};
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CompositeExplicitAutograd, m) {
  m.impl("bone_bat_linear", &bone_bat_linear);
  m.impl("bone_bat_linear_backward", &bone_bat_linear_backward);
  m.impl("bone_bat_weight", &bone_bat_weight);
}

}  // namespace peftcore

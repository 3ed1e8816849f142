#include "lora/lora_compose.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <c10/core/DeviceGuard.h>

#include "lora/lora_checks.h"

namespace peftcore {
namespace {

std::optional<DropoutSpec> make_spec(double p, const std::optional<at::Tensor>& seed) {
  if (p == 0.0) return std::nullopt;
  return DropoutSpec{p, *seed};
}

const DropoutSpec* ptr(const std::optional<DropoutSpec>& spec) {
  return spec.has_value() ? &*spec : nullptr;
}

at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

constexpr int64_t kLoraMergeFactor = 6;  // measured: see merged_weight_pays

bool use_merged_weight(const LoraDims& d, const at::Tensor& x, double dropout_p) {
  return dropout_p == 0.0 && merged_weight_pays(d.rows, d.in, d.out, x.scalar_type(), kLoraMergeFactor);
}

at::Tensor merged_weight(const at::Tensor& weight, const at::Tensor& lora_A,
                         const at::Tensor& lora_B, double scaling) {
  return at::addmm(weight, lora_B, lora_A, /*beta=*/1, /*alpha=*/scaling);
}

at::Tensor contiguous_result(at::Tensor t) { return t.is_contiguous() ? t : t.contiguous(); }

// The order of the two terms of y (and of dx) without the merged weight. Skinny term
// first and the large GEMM accumulating into it (beta = 1) saves a pass on the GPU; on
// the CPU in 16-bit, oneDNN's accumulating GEMM cost 2.2 ms more per forward +
// backward than a plain one (N=4096, 1024^2, bf16: 41.6 vs 39.4 ms), so there the
// large GEMM writes first and the rank-r term is added into it (LoRA bf16 layer,
// process A/B: 1.119 -> 1.107x the base).
bool large_gemm_first(const at::Tensor& x) {
  return x.is_cpu() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
}

}  // namespace

bool merged_weight_pays(int64_t rows, int64_t in, int64_t out, at::ScalarType dtype, int64_t factor) {
  return (dtype == at::kFloat || dtype == at::kDouble) && rows * (in + out) >= factor * in * out;
}

std::tuple<at::Tensor, at::Tensor> lora_forward(const LoraSkinnyOps& ops, const at::Tensor& x,
                                                const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias,
                                                const at::Tensor& lora_A,
                                                const at::Tensor& lora_B, double scaling,
                                                double dropout_p,
                                                const std::optional<at::Tensor>& dropout_seed) {
  const LoraDims d = check_lora_forward(x, weight, bias, lora_A, lora_B, dropout_p, dropout_seed);
  const c10::OptionalDeviceGuard guard(x.device());
  const auto spec = make_spec(dropout_p, dropout_seed);
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const bool has_bias = bias.has_value() && bias->defined();

  at::Tensor hidden = ops.shrink(x2, lora_A, scaling / (1.0 - dropout_p), ptr(spec));
  at::Tensor y;
  if (use_merged_weight(d, x, dropout_p)) {
    const at::Tensor w = merged_weight(weight, lora_A, lora_B, scaling);
    y = has_bias ? at::addmm(*bias, x2, w.t()) : at::mm(x2, w.t());
  } else if (large_gemm_first(x)) {
    y = contiguous_result(has_bias ? at::addmm(*bias, x2, weight.t()) : at::mm(x2, weight.t()));
    ops.expand_add_(y, hidden, lora_B);
  } else {
    y = contiguous_result(has_bias ? at::addmm(*bias, hidden, lora_B.t()) : at::mm(hidden, lora_B.t()));
    y.addmm_(x2, weight.t());
  }
  return {contiguous_result(y).view(with_last_dim(x, d.out)), hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_backward(
    const LoraSkinnyOps& ops, const at::Tensor& grad_out, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
    const at::Tensor& lora_hidden, double scaling, double dropout_p,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 5> output_mask) {
  const LoraDims d = check_lora_backward(grad_out, x, weight, lora_A, lora_B, lora_hidden,
                                         dropout_p, dropout_seed);
  const c10::OptionalDeviceGuard guard(x.device());
  const auto spec = make_spec(dropout_p, dropout_seed);
  const at::Tensor g2 = grad_out.reshape({d.rows, d.out});
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const bool merged = use_merged_weight(d, x, dropout_p);

  at::Tensor grad_x;
  if (output_mask[0] && merged) {
    grad_x = contiguous_result(at::mm(g2, merged_weight(weight, lora_A, lora_B, scaling)));
  }
  // The adapter's own passes over G and x; unless the merged weight serves, they
  // also write m∘(T A) as grad_x, which the large GEMM then adds G W into (or, see
  // large_gemm_first, add T A into the G W the large GEMM wrote).
  at::Tensor* lora_dx = (output_mask[0] && !merged) ? &grad_x : nullptr;
  // With dropout dx's term is masked block by block: written, then accumulated into.
  const bool gemm_first = lora_dx != nullptr && dropout_p == 0.0 && large_gemm_first(x);
  if (gemm_first) grad_x = contiguous_result(at::mm(g2, weight));
  LoraSkinnyGrads adapter;
  if (lora_dx != nullptr || output_mask[3] || output_mask[4]) {
    adapter = ops.backward(g2, x2, lora_hidden, lora_A, lora_B, scaling / (1.0 - dropout_p),
                           ptr(spec), lora_dx, output_mask[3], output_mask[4]);
  }
  if (lora_dx != nullptr && !gemm_first) grad_x.addmm_(g2, weight);
  adapter.wait();  // after the large GEMM, which a backend may overlap dA and dB with
  return {
      output_mask[0] ? grad_x.view(x.sizes()) : empty_grad(x),
      output_mask[1] ? at::mm(g2.t(), x2) : empty_grad(x),
      output_mask[2] ? at::sum(g2, {0}) : empty_grad(x),
      output_mask[3] ? adapter.grad_A : empty_grad(x),
      output_mask[4] ? adapter.grad_B : empty_grad(x),
  };
}

}  // namespace peftcore

// The kernels of lora_linear and lora_linear_backward, for every backend: the
// skinny passes come from the low-rank engine (lowrank/lowrank.h), the large GEMMs
// from ATen (MKL / oneDNN, cuBLAS).
//
//   forward   hidden = s' (m∘x) A^T                 [N, r]   (s' = s / (1 - p))
//             y      = hidden B^T + b;  y += x W^T         (into y's buffer)
//   backward  T  = s' G B                           [N, r]
//             dB = G^T hidden                       [out, r]
//             dA = T^T (m∘x)                        [r, in]
//             dx = m∘(T A);  dx += G W                     (into dx's buffer)
// The skinny term is written first and the large GEMM adds into it (beta = 1): the
// GEMM reads its C operand tile by tile while it is compute-bound, where adding the
// skinny term afterwards would be one more read-modify-write pass over [N, out] or
// [N, in].
//             dW = G^T x,  db = Σ_rows G            (only when asked for)
// m is the dropout keep-mask regenerated from the seed; it never outlives a block.
//
// Merged-weight path: without dropout, in float32/float64 and when N is large
// enough that an out x in temporary is cheaper than the two N-sized
// read-modify-write passes it replaces, y = x (W + s B A)^T + b and dx = G (W + s B A)
// run as single GEMMs. W + s B A rounds once to the weight dtype: below the GEMM's
// own rounding in fp32/fp64, which is why 16-bit dtypes never take this path.
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <c10/core/DeviceGuard.h>

#include <torch/library.h>

#include "lora/lora_checks.h"
#include "common/checks.h"
#include "common/results.h"
#include "lowrank/lowrank.h"

namespace peftcore {
namespace {

// merged_weight_pays's factor for LoRA: the smallest N (in + out) / (in out) at which
// the merged path measured faster than the unmerged one in a process-alternating
// A/B on the CPU (in = out = 1024, r = 16, ratio to the frozen base).
constexpr int64_t kLoraMergeFactor = 6;

bool use_merged_weight(const LoraDims& d, const at::Tensor& x, double dropout_p) {
  return dropout_p == 0.0 && merged_weight_pays(d.rows, d.in, d.out, x.scalar_type(), kLoraMergeFactor);
}

at::Tensor merged_weight(const at::Tensor& weight, const at::Tensor& lora_A,
                         const at::Tensor& lora_B, double scaling) {
  return at::addmm(weight, lora_B, lora_A, /*beta=*/1, /*alpha=*/scaling);
}

// The order of the two terms of y (and of dx) without the merged weight. Skinny term
// first and the large GEMM accumulating into it (beta = 1) saves a pass on the GPU; on
// the CPU in 16-bit oneDNN's accumulating GEMM is slower than a plain one by more than
// that pass costs (measured in a process A/B of the bf16 layer), so there the large
// GEMM writes first and the rank-r term is added into it.
bool large_gemm_first(const at::Tensor& x) {
  return x.is_cpu() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf);
}

std::tuple<at::Tensor, at::Tensor> lora_linear(const at::Tensor& x, const at::Tensor& weight,
                                               const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
                                               const at::Tensor& lora_B, double scaling, double dropout_p,
                                               const std::optional<at::Tensor>& dropout_seed) {
  const LoraDims d = check_lora_forward(x, weight, bias, lora_A, lora_B, dropout_p, dropout_seed);
  const LowRankOps& ops = lowrank_ops(x.device());
  const c10::OptionalDeviceGuard guard(x.device());
  const auto spec = dropout_spec(dropout_p, dropout_seed);
  const at::Tensor x2 = x.reshape({d.rows, d.in});
  const bool has_bias = bias.has_value() && bias->defined();

  at::Tensor hidden = ops.shrink(x2, lora_A, scaling / (1.0 - dropout_p), spec_ptr(spec));
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
    const at::Tensor& lora_B, const at::Tensor& lora_hidden, double scaling, double dropout_p,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 5> output_mask) {
  const LoraDims d = check_lora_backward(grad_out, x, weight, lora_A, lora_B, lora_hidden, dropout_p, dropout_seed);
  const LowRankOps& ops = lowrank_ops(x.device());
  const c10::OptionalDeviceGuard guard(x.device());
  const auto spec = dropout_spec(dropout_p, dropout_seed);
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
  LowRankGrads adapter;
  if (lora_dx != nullptr || output_mask[3] || output_mask[4]) {
    adapter = ops.backward(g2, x2, lora_hidden, lora_A, lora_B, scaling / (1.0 - dropout_p),
                           spec_ptr(spec), lora_dx, output_mask[3], output_mask[4]);
  }
  if (lora_dx != nullptr && !gemm_first) grad_x.addmm_(g2, weight);
  return {
      output_mask[0] ? grad_x.view(x.sizes()) : empty_grad(x),
      output_mask[1] ? at::mm(g2.t(), x2) : empty_grad(x),
      output_mask[2] ? at::sum(g2, {0}) : empty_grad(x),
      output_mask[3] ? adapter.grad_A : empty_grad(x),
      output_mask[4] ? adapter.grad_B : empty_grad(x),
  };
}

void impl_lora(torch::Library& m) {
  m.impl("lora_linear", &lora_linear);
  m.impl("lora_linear_backward", &lora_linear_backward);
}

}  // namespace

PEFTCORE_LOWRANK_IMPL(impl_lora)

}  // namespace peftcore

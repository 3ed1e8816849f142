// CPU backend of the fused LoRA linear: the skinny primitives of lora_compose.h
// as ATen GEMMs (MKL / oneDNN), with dropout applied block by block from the
// regenerated mask so that no N x in masked copy of x is ever materialised.
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/dropout_cpu.h"
#include "lora/lora_compose.h"

namespace peftcore {
namespace {

// Calls body(row0, rows) over consecutive row blocks of a [n, cols] matrix.
template <typename Body>
void for_row_blocks(int64_t n, int64_t cols, int64_t element_size, const Body& body) {
  const int64_t block = dropout_block_rows(cols, element_size);
  for (int64_t row0 = 0; row0 < n; row0 += block) body(row0, std::min(block, n - row0));
}

at::Tensor shrink_cpu(const at::Tensor& x, const at::Tensor& A, double scale,
                      const DropoutSpec* dropout) {
  if (dropout == nullptr) return at::mm(x, A.t()).mul_(scale);
  const DropoutMask mask = make_dropout_mask(dropout->seed, dropout->p);
  at::Tensor h = at::empty({x.size(0), A.size(0)}, x.options());
  for_row_blocks(x.size(0), x.size(1), x.element_size(), [&](int64_t row0, int64_t rows) {
    at::Tensor h_block = h.narrow(0, row0, rows);
    at::mm_out(h_block, apply_dropout_rows(x.narrow(0, row0, rows), row0, mask), A.t());
  });
  return h.mul_(scale);
}

void expand_add_cpu(at::Tensor& y, const at::Tensor& h, const at::Tensor& Bt,
                    const DropoutSpec* dropout) {
  if (dropout == nullptr) {
    y.addmm_(h, Bt.t());
    return;
  }
  const DropoutMask mask = make_dropout_mask(dropout->seed, dropout->p);
  for_row_blocks(y.size(0), y.size(1), y.element_size(), [&](int64_t row0, int64_t rows) {
    at::Tensor y_block = y.narrow(0, row0, rows);
    add_dropout_rows_(y_block, at::mm(h.narrow(0, row0, rows), Bt.t()), row0, mask);
  });
}

at::Tensor reduce_cpu(const at::Tensor& L, const at::Tensor& R, const DropoutSpec* dropout) {
  if (dropout == nullptr) return at::mm(L.t(), R);
  const DropoutMask mask = make_dropout_mask(dropout->seed, dropout->p);
  // Partial products are summed in float32 when the inputs are 16-bit.
  const bool low = L.scalar_type() == at::kHalf || L.scalar_type() == at::kBFloat16;
  at::Tensor acc = at::zeros({L.size(1), R.size(1)}, L.options().dtype(low ? at::kFloat : L.scalar_type()));
  for_row_blocks(R.size(0), R.size(1), R.element_size(), [&](int64_t row0, int64_t rows) {
    const at::Tensor part =
        at::mm(L.narrow(0, row0, rows).t(), apply_dropout_rows(R.narrow(0, row0, rows), row0, mask));
    acc.add_(part);
  });
  return low ? acc.to(L.scalar_type()) : acc;
}

constexpr LoraSkinnyOps kCpuOps{&shrink_cpu, &expand_add_cpu, &reduce_cpu};

std::tuple<at::Tensor, at::Tensor> lora_linear_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling, double dropout_p,
    const std::optional<at::Tensor>& dropout_seed) {
  return lora_forward(kCpuOps, x, weight, bias, lora_A, lora_B, scaling, dropout_p, dropout_seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& lora_hidden,
    double scaling, double dropout_p, const std::optional<at::Tensor>& dropout_seed,
    std::array<bool, 5> output_mask) {
  return lora_backward(kCpuOps, grad_out, x, weight, lora_A, lora_B, lora_hidden, scaling,
                       dropout_p, dropout_seed, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CPU, m) {
  m.impl("lora_linear", &lora_linear_cpu);
  m.impl("lora_linear_backward", &lora_linear_backward_cpu);
}

}  // namespace peftcore

// The lora ops: schemas and the autocast rule. Kernels: lora_linear.cpp (CPU and
// CUDA, over the low-rank engine); autograd: lora_autograd.cpp; fakes and the Python
// wrapper: python/peftcore/ops/lora.py.
#include <torch/library.h>

#include "common/autocast.h"
#include "lora/lora_schema.h"

using namespace peftcore;  // op names, signatures, impl_autocast

TORCH_LIBRARY_FRAGMENT(peftcore, m) {
  // y = x W^T + b + scaling * (dropout(x) A^T) B^T, plus the saved N x r
  // lora_hidden = scaling / (1 - p) * (mask ∘ x) A^T that backward reuses.
  m.def(
      "lora_linear(Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, Tensor lora_B, "
      "float scaling, float dropout_p, Tensor? dropout_seed) -> (Tensor out, Tensor lora_hidden)");
  // output_mask selects (grad_x, grad_weight, grad_bias, grad_A, grad_B); the
  // gradients not asked for come back as empty tensors.
  m.def(
      "lora_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor lora_A, "
      "Tensor lora_B, Tensor lora_hidden, float scaling, float dropout_p, Tensor? dropout_seed, "
      "bool[5] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias, "
      "Tensor grad_A, Tensor grad_B)");
}

TORCH_LIBRARY_IMPL(peftcore, AutocastCPU, m) { impl_autocast<kCPU, kLoraLinear, LoraLinearSig>(m); }
TORCH_LIBRARY_IMPL(peftcore, AutocastCUDA, m) { impl_autocast<kCUDA, kLoraLinear, LoraLinearSig>(m); }

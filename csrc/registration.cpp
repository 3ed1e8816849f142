// Every peftcore schema, in one place. Backends register kernels with
// TORCH_LIBRARY_IMPL in csrc/<family>/<family>_{cpu,cuda}; fake (meta) kernels
// and autograd formulas are registered from python/peftcore/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(peftcore, m) {
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

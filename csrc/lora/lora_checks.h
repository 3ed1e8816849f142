// Validation of the lora_linear ops, shared by the CPU and CUDA backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace peftcore {

struct LoraDims {
  int64_t rows;  // N: product of x's leading dimensions
  int64_t in;
  int64_t out;
  int64_t rank;
};

LoraDims check_lora_forward(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
                            const at::Tensor& lora_B, double dropout_p,
                            const std::optional<at::Tensor>& dropout_seed);

LoraDims check_lora_backward(const at::Tensor& grad_out, const at::Tensor& x,
                             const at::Tensor& weight, const at::Tensor& lora_A,
                             const at::Tensor& lora_B, const at::Tensor& lora_hidden,
                             double dropout_p, const std::optional<at::Tensor>& dropout_seed);

}  // namespace peftcore

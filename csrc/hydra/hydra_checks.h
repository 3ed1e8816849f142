// Validation of the hydra_linear ops, shared by the CPU and CUDA backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace peftcore {

struct HydraDims {
  int64_t rows, in, out, rank_p, rank_s;  // a rank is 0 when its branch is absent
};

HydraDims check_hydra_forward(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                              const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s,
                              double dropout_p, const std::optional<at::Tensor>& dropout_seed);

HydraDims check_hydra_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& h, const std::optional<at::Tensor>& A_p,
                               const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& A_s,
                               const std::optional<at::Tensor>& B_s, const at::Tensor& hidden_p,
                               const at::Tensor& hidden_s, double dropout_p,
                               const std::optional<at::Tensor>& dropout_seed);

}  // namespace peftcore

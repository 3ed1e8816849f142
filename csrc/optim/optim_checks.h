// Validation of the multi-tensor optimizer ops, shared by the CPU and CUDA backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace peftcore {

// Every tensor of `list` is dense, contiguous, on `device`, and has the numel of
// the same index in `like` (when given). `float_only` also requires floating types.
void check_tensor_list(std::string_view op, std::string_view name, at::TensorList list,
                       size_t expected_size, const at::Device& device,
                       std::optional<at::TensorList> like = std::nullopt);

// Optimizer state (moments, momentum buffers) has the compute dtype of its
// parameter: float64 for float64 parameters, float32 otherwise.
at::ScalarType state_dtype_for(at::ScalarType param_dtype);
void check_state_dtypes(std::string_view op, std::string_view name, at::TensorList state,
                        at::TensorList params);

// A gradient has its parameter's dtype, or is 16-bit for a float32 (master) parameter.
void check_grad_dtypes(std::string_view op, at::TensorList grads, at::TensorList params);

// A 0-dim (or 1-element) floating tensor on `device`.
void check_scalar_tensor(std::string_view op, std::string_view name, const at::Tensor& t,
                         const at::Device& device);

// The device every list is checked against: params[0]'s (CPU for an empty list).
at::Device list_device(at::TensorList params);

}  // namespace peftcore

namespace peftcore {

// Arguments of lamb_step_ / lars_step_; `state` holds the per-parameter state lists.
void check_optimizer_step(std::string_view op, at::TensorList params, at::TensorList grads,
                          const std::vector<std::pair<const char*, at::TensorList>>& state,
                          at::TensorList model_params, const at::Tensor& lr,
                          const at::Tensor& grad_divisor, const std::optional<at::Tensor>& found_inf);

// The full argument checks of lamb_step_ and lars_step_.
void check_lamb_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList model_params, const at::Tensor& lr,
                     const at::Tensor& step, const at::Tensor& grad_divisor,
                     const std::optional<at::Tensor>& found_inf);
void check_lars_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                     at::TensorList model_params, const at::Tensor& lr,
                     const at::Tensor& grad_divisor, const std::optional<at::Tensor>& found_inf,
                     size_t fresh_size, bool use_momentum);

}  // namespace peftcore

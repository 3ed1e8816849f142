#include "optim/optim_checks.h"

#include <c10/util/Exception.h>

namespace peftcore {

void check_tensor_list(std::string_view op, std::string_view name, at::TensorList list,
                       size_t expected_size, const at::Device& device,
                       std::optional<at::TensorList> like) {
  TORCH_CHECK(list.size() == expected_size, op, ": ", name, " must hold ", expected_size,
              " tensors (one per parameter), got ", list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const at::Tensor& t = list[i];
    TORCH_CHECK(t.defined(), op, ": ", name, "[", i, "] is undefined");
    TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name, "[", i, "] is a ", t.layout(),
                " tensor; sparse gradients are not supported (use a dense gradient)");
    TORCH_CHECK(t.device() == device, op, ": ", name, "[", i, "] is on ", t.device(),
                " but the parameters are on ", device, "; all tensors of a step share one device");
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, "[", i, "] with shape ", t.sizes(),
                " must be contiguous");
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, "[", i,
                "] must be floating point, got ", t.scalar_type());
    if (like.has_value()) {
      TORCH_CHECK(t.numel() == (*like)[i].numel(), op, ": ", name, "[", i, "] has shape ",
                  t.sizes(), " but its parameter has shape ", (*like)[i].sizes());
    }
  }
}

at::ScalarType state_dtype_for(at::ScalarType param_dtype) {
  return param_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

void check_state_dtypes(std::string_view op, std::string_view name, at::TensorList state,
                        at::TensorList params) {
  for (size_t i = 0; i < state.size(); ++i) {
    const auto want = state_dtype_for(params[i].scalar_type());
    TORCH_CHECK(state[i].scalar_type() == want, op, ": ", name, "[", i, "] must be ", want,
                " for a ", params[i].scalar_type(), " parameter, got ", state[i].scalar_type());
  }
}

void check_grad_dtypes(std::string_view op, at::TensorList grads, at::TensorList params) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const auto p = params[i].scalar_type(), g = grads[i].scalar_type();
    const bool ok = g == p || (p == at::kFloat && (g == at::kHalf || g == at::kBFloat16));
    TORCH_CHECK(ok, op, ": grads[", i, "] has dtype ", g, " but its parameter is ", p,
                "; a gradient has its parameter's dtype (or 16-bit for a float32 master weight)");
  }
}

void check_scalar_tensor(std::string_view op, std::string_view name, const at::Tensor& t,
                         const at::Device& device) {
  TORCH_CHECK(t.defined() && t.numel() == 1, op, ": ", name,
              " must be a tensor with one element, got shape ",
              t.defined() ? t.sizes() : at::IntArrayRef{});
  TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), " but the parameters are on ",
              device);
}

at::Device list_device(at::TensorList params) {
  return params.empty() ? at::Device(at::kCPU) : params[0].device();
}

}  // namespace peftcore

namespace peftcore {

void check_optimizer_step(std::string_view op, at::TensorList params, at::TensorList grads,
                          const std::vector<std::pair<const char*, at::TensorList>>& state,
                          at::TensorList model_params, const at::Tensor& lr,
                          const at::Tensor& grad_divisor, const std::optional<at::Tensor>& found_inf) {
  const at::Device device = list_device(params);
  const size_t n = params.size();
  check_tensor_list(op, "params", params, n, device);
  check_tensor_list(op, "grads", grads, n, device, params);
  check_grad_dtypes(op, grads, params);
  for (const auto& [name, list] : state) {
    check_tensor_list(op, name, list, n, device, params);
    check_state_dtypes(op, name, list, params);
  }
  if (!model_params.empty()) {
    check_tensor_list(op, "model_params", model_params, n, device, params);
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(params[i].scalar_type() == at::kFloat, op, ": with model_params, params[", i,
                  "] must be a float32 master weight, got ", params[i].scalar_type());
    }
  }
  check_scalar_tensor(op, "lr", lr, device);
  check_scalar_tensor(op, "grad_divisor", grad_divisor, device);
  if (found_inf.has_value()) check_scalar_tensor(op, "found_inf", *found_inf, device);
}

}  // namespace peftcore

namespace peftcore {

void check_lamb_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList model_params, const at::Tensor& lr,
                     const at::Tensor& step, const at::Tensor& grad_divisor,
                     const std::optional<at::Tensor>& found_inf) {
  check_optimizer_step("lamb_step_", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}},
                       model_params, lr, grad_divisor, found_inf);
  check_scalar_tensor("lamb_step_", "step", step, list_device(params));
}

void check_lars_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                     at::TensorList model_params, const at::Tensor& lr,
                     const at::Tensor& grad_divisor, const std::optional<at::Tensor>& found_inf,
                     size_t fresh_size, bool use_momentum) {
  std::vector<std::pair<const char*, at::TensorList>> state;
  if (use_momentum) state.emplace_back("momentum_buffers", momentum_buffers);
  check_optimizer_step("lars_step_", params, grads, state, model_params, lr, grad_divisor, found_inf);
  TORCH_CHECK(!use_momentum || fresh_size == params.size(), "lars_step_: fresh must hold ",
              params.size(), " flags (one per parameter), got ", fresh_size);
}

}  // namespace peftcore

// Autograd of lora_linear: saves x once (only when dW or dA needs it) and the N x r
// hidden, and calls lora_linear_backward for the gradients asked for.
#include <torch/library.h>

#include "common/autograd.h"
#include "lora/lora_schema.h"

namespace peftcore {
namespace {

using namespace autograd;

struct LoraFunction : public torch::autograd::Function<LoraFunction> {
  static variable_list forward(AutogradContext* ctx, T x, T weight, Opt bias, T lora_A, T lora_B, double scaling,
                               double dropout_p, Opt seed) {
    static const auto op = find_op<LoraLinearSig>(kLoraLinear);
    auto [out, hidden] = call_below_autograd(op, x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed);
    const bool x_read = requires_grad(weight) || requires_grad(lora_A);
    ctx->save_for_backward({kept_or_stand_in(x, x_read), weight, lora_A, lora_B, hidden, or_undefined(seed)});
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["mask"] = grad_bits(x, weight, bias, lora_A, lora_B);
    ctx->mark_non_differentiable({hidden});
    return {out, hidden};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<LoraLinearBackwardSig>(kLoraLinearBackward);
    return backward_of<5>(ctx, 3, [&](const variable_list& s, const std::array<bool, 5>& mask) {
      return op.call(grads[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["scaling"].toDouble(),
                     ctx->saved_data["dropout_p"].toDouble(), optional_of(s[5]), mask);
    });
  }

  static std::tuple<at::Tensor, at::Tensor> unpack(const variable_list& v) { return {v[0], v[1]}; }
};

std::tuple<at::Tensor, at::Tensor> lora_autograd(T x, T weight, Opt bias, T lora_A, T lora_B, double scaling,
                                                 double dropout_p, Opt seed) {
  return forward_or_record<LoraFunction, LoraLinearSig>(kLoraLinear, grad_bits(x, weight, bias, lora_A, lora_B), x,
                                                        weight, bias, lora_A, lora_B, scaling, dropout_p, seed);
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, Autograd, m) { m.impl("lora_linear", &lora_autograd); }

}  // namespace peftcore

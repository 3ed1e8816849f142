// Autograd of hydra_linear: saves x, h (with dropout only) and the two N x r hiddens,
// and calls hydra_linear_backward for the gradients asked for.
#include <torch/library.h>

#include "common/autograd.h"
#include "hydra/hydra_schema.h"

namespace peftcore {
namespace {

using namespace autograd;

struct HydraFunction : public torch::autograd::Function<HydraFunction> {
  static variable_list forward(AutogradContext* ctx, T x, T weight, Opt bias, Opt A_p, Opt B_p, Opt A_s, Opt B_s,
                               double scale_p, double scale_s, double dropout_p, Opt seed) {
    static const auto op = find_op<HydraLinearSig>(kHydraLinear);
    auto [out, h, hidden_p, hidden_s] =
        call_below_autograd(op, x, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s, dropout_p, seed);
    ctx->save_for_backward({x, weight, or_undefined(bias), h, or_undefined(A_p), or_undefined(B_p), or_undefined(A_s),
                            or_undefined(B_s), hidden_p, hidden_s, or_undefined(seed)});
    ctx->saved_data["scale_p"] = scale_p;
    ctx->saved_data["scale_s"] = scale_s;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["mask"] = grad_bits(x, weight, bias, A_p, B_p, A_s, B_s);
    ctx->mark_non_differentiable({h, hidden_p, hidden_s});
    return {out, h, hidden_p, hidden_s};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<HydraLinearBackwardSig>(kHydraLinearBackward);
    return backward_of<7>(ctx, 4, [&](const variable_list& s, const std::array<bool, 7>& mask) {
      return op.call(grads[0], s[0], s[1], optional_of(s[2]), s[3], optional_of(s[4]), optional_of(s[5]),
                     optional_of(s[6]), optional_of(s[7]), s[8], s[9], ctx->saved_data["scale_p"].toDouble(),
                     ctx->saved_data["scale_s"].toDouble(), ctx->saved_data["dropout_p"].toDouble(),
                     optional_of(s[10]), mask);
    });
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> unpack(const variable_list& v) {
    return {v[0], v[1], v[2], v[3]};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hydra_autograd(T x, T weight, Opt bias, Opt A_p, Opt B_p,
                                                                          Opt A_s, Opt B_s, double scale_p,
                                                                          double scale_s, double dropout_p, Opt seed) {
  return forward_or_record<HydraFunction, HydraLinearSig>(kHydraLinear, grad_bits(x, weight, bias, A_p, B_p, A_s, B_s),
                                                          x, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s,
                                                          dropout_p, seed);
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, Autograd, m) { m.impl("hydra_linear", &hydra_autograd); }

}  // namespace peftcore

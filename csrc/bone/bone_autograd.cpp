// Autograd of the MiSS ops: bone_linear saves the N x r block sum (and x only when
// dW needs it); bone_bat_linear saves x, the weight and the block.
#include <torch/library.h>

#include "bone/bone_schema.h"
#include "common/autograd.h"

namespace peftcore {
namespace {

using namespace autograd;

struct BoneFunction : public torch::autograd::Function<BoneFunction> {
  static variable_list forward(AutogradContext* ctx, T x, T weight, Opt bias, T up, int64_t r) {
    static const auto op = find_op<BoneLinearSig>(kBoneLinear);
    auto [out, hidden] = call_below_autograd(op, x, weight, bias, up, r);
    ctx->save_for_backward({kept_or_stand_in(x, requires_grad(weight)), weight, up, hidden});
    ctx->saved_data["r"] = r;
    ctx->saved_data["mask"] = grad_bits(x, weight, bias, up);
    ctx->mark_non_differentiable({hidden});
    return {out, hidden};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<BoneLinearBackwardSig>(kBoneLinearBackward);
    return backward_of<4>(ctx, 1, [&](const variable_list& s, const std::array<bool, 4>& mask) {
      return op.call(grads[0], s[0], s[1], s[2], s[3], ctx->saved_data["r"].toInt(), mask);
    });
  }

  static std::tuple<at::Tensor, at::Tensor> unpack(const variable_list& v) { return {v[0], v[1]}; }
};

std::tuple<at::Tensor, at::Tensor> bone_autograd(T x, T weight, Opt bias, T up, int64_t r) {
  return forward_or_record<BoneFunction, BoneLinearSig>(kBoneLinear, grad_bits(x, weight, bias, up), x, weight, bias,
                                                        up, r);
}

struct BatFunction : public torch::autograd::Function<BatFunction> {
  static variable_list forward(AutogradContext* ctx, T x, T weight, Opt bias, T block) {
    static const auto op = find_op<BoneBatLinearSig>(kBoneBatLinear);
    at::Tensor out = call_below_autograd(op, x, weight, bias, block);
    ctx->save_for_backward({x, weight, block});
    ctx->saved_data["mask"] = grad_bits(x, weight, bias, block);
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<BoneBatLinearBackwardSig>(kBoneBatLinearBackward);
    return backward_of<4>(ctx, 0, [&](const variable_list& s, const std::array<bool, 4>& mask) {
      return op.call(grads[0], s[0], s[1], s[2], mask, kBatBandElements);
    });
  }

  static at::Tensor unpack(const variable_list& v) { return v[0]; }
};

at::Tensor bat_autograd(T x, T weight, Opt bias, T block) {
  return forward_or_record<BatFunction, BoneBatLinearSig>(kBoneBatLinear, grad_bits(x, weight, bias, block), x, weight,
                                                          bias, block);
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, Autograd, m) {
  m.impl("bone_linear", &bone_autograd);
  m.impl("bone_bat_linear", &bat_autograd);
}

}  // namespace peftcore

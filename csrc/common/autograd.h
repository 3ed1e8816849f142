// What the adapter families' C++ autograd Functions share (lora/lora_autograd.cpp,
// hydra/hydra_autograd.cpp, bone/bone_autograd.cpp). Autograd is C++ so that a
// training step never crosses into Python for a layer: a Python register_autograd
// costs a forward context and a backward call in Python per layer and step, which
// decides small-token GPU steps where the host bounds the step. Each backward stays
// its own registered op, so torch.compile sees two ops per layer, and refuses double
// backward from Python (python/peftcore/ops/_registry.py).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <optional>
#include <tuple>

namespace peftcore::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Opt = const std::optional<at::Tensor>&;
using T = const at::Tensor&;

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline bool requires_grad(T t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(Opt t) { return t.has_value() && requires_grad(*t); }

// Which inputs need a gradient, as bits in argument order (kept in saved_data).
template <typename... Ts>
int64_t grad_bits(const Ts&... ts) {
  int64_t bits = 0, i = 0;
  ((bits |= int64_t{requires_grad(ts)} << i++), ...);
  return bits;
}

template <size_t N>
std::array<bool, N> mask_of(AutogradContext* ctx) {
  const int64_t bits = ctx->saved_data["mask"].toInt();
  std::array<bool, N> mask{};
  for (size_t i = 0; i < N; ++i) mask[i] = (bits >> i) & 1;
  return mask;
}

inline std::optional<at::Tensor> optional_of(T t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}
inline at::Tensor or_undefined(Opt t) { return t.value_or(at::Tensor()); }

// x is read in backward only for some gradients; otherwise a zero-storage stand-in
// carries its shape and x is not kept alive.
inline at::Tensor kept_or_stand_in(T x, bool read) {
  return read ? x : at::zeros({}, x.options()).expand_symint(x.sym_sizes());  // symbolic shapes under compile
}

// The backward op is called below autograd, except under create_graph: then its own
// autograd kernel runs and refuses double backward with a clear error.
struct BackwardDispatch {
  std::optional<at::AutoDispatchBelowADInplaceOrView> below;
  BackwardDispatch() {
    if (!at::GradMode::is_enabled()) below.emplace();
  }
};

// The backward op's gradients, undefined where not asked for, then one undefined
// gradient per trailing non-differentiable argument.
template <size_t N, typename Tuple>
variable_list masked_grads(Tuple&& grads, const std::array<bool, N>& mask, size_t trailing) {
  variable_list out;
  std::apply([&](auto&... g) { size_t i = 0; ((out.push_back(mask[i++] ? g : at::Tensor())), ...); }, grads);
  out.resize(N + trailing);
  return out;
}

// A Function's backward: calls `call(saved, mask)` (the backward op on the saved
// tensors, asking for the gradients in mask) and returns its gradients as autograd
// wants them, `trailing` undefined ones for the non-differentiable arguments after.
template <size_t N, typename Call>
variable_list backward_of(AutogradContext* ctx, size_t trailing, const Call& call) {
  const variable_list saved = ctx->get_saved_variables();
  const auto mask = mask_of<N>(ctx);
  BackwardDispatch dispatch;
  return masked_grads(call(saved, mask), mask, trailing);
}

// The forward op called below autograd (inside a Function's forward).
template <typename Sig, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Sig>& op, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(args...);
}

// Runs Fn::apply only when a gradient can flow; otherwise calls the op below autograd.
template <typename Fn, typename Sig, typename... Args>
auto forward_or_record(const char* name, int64_t bits, const Args&... args) {
  if (!at::GradMode::is_enabled() || bits == 0) {
    static const auto op = find_op<Sig>(name);
    return call_below_autograd(op, args...);
  }
  return Fn::unpack(Fn::apply(args...));
}

}  // namespace peftcore::autograd

#include "lora/lora_checks.h"

#include "common/checks.h"

namespace peftcore {
namespace {

constexpr const char* kFwd = "lora_linear";
constexpr const char* kBwd = "lora_linear_backward";

LoraDims check_common(const char* op, const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& lora_A, const at::Tensor& lora_B, double dropout_p,
                      const std::optional<at::Tensor>& dropout_seed) {
  const auto [rows, in, out] = check_linear_input(op, x, weight);
  check_dim(op, "lora_A", lora_A, 2);
  const int64_t rank = lora_A.size(0);
  TORCH_CHECK(rank > 0, op, ": the LoRA rank r must be positive; lora_A has shape ",
              lora_A.sizes(), " (expected [r, in_features]=[r, ", in, "] with r >= 1)");
  check_shape(op, "lora_A", lora_A, {rank, in}, "[r, in_features]");
  check_dim(op, "lora_B", lora_B, 2);
  check_shape(op, "lora_B", lora_B, {out, rank}, "[out_features, r]");
  check_same_dtype_device(op, "lora_A", lora_A, "x", x);
  check_same_dtype_device(op, "lora_B", lora_B, "x", x);
  check_dropout_p(op, dropout_p);
  check_dropout_seed(op, dropout_p, dropout_seed, x.device());
  return LoraDims{rows, in, out, rank};
}

}  // namespace

LoraDims check_lora_forward(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
                            const at::Tensor& lora_B, double dropout_p,
                            const std::optional<at::Tensor>& dropout_seed) {
  const LoraDims d = check_common(kFwd, x, weight, lora_A, lora_B, dropout_p, dropout_seed);
  check_linear_bias(kFwd, bias, d.out, x);
  return d;
}

LoraDims check_lora_backward(const at::Tensor& grad_out, const at::Tensor& x,
                             const at::Tensor& weight, const at::Tensor& lora_A,
                             const at::Tensor& lora_B, const at::Tensor& lora_hidden,
                             double dropout_p, const std::optional<at::Tensor>& dropout_seed) {
  const LoraDims d = check_common(kBwd, x, weight, lora_A, lora_B, dropout_p, dropout_seed);
  const auto out_shape = with_last_dim(x, d.out);
  check_shape(kBwd, "grad_out", grad_out, out_shape, "[..., out_features]");
  check_same_dtype_device(kBwd, "grad_out", grad_out, "x", x);
  check_shape(kBwd, "lora_hidden", lora_hidden, {d.rows, d.rank}, "[N, r]");
  check_same_dtype_device(kBwd, "lora_hidden", lora_hidden, "x", x);
  return d;
}

}  // namespace peftcore

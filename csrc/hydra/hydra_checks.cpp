#include "hydra/hydra_checks.h"

#include "common/checks.h"

namespace peftcore {
namespace {

bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// One low-rank branch: A [r, k] and B [out, r], both given or both absent; returns r.
int64_t check_branch(const char* op, const char* a_name, const char* b_name,
                     const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B,
                     int64_t k, const char* k_name, int64_t out, const at::Tensor& x) {
  TORCH_CHECK(present(A) == present(B), op, ": ", a_name, " and ", b_name,
              " must both be given or both be None");
  if (!present(A)) return 0;
  check_dim(op, a_name, *A, 2);
  const int64_t r = A->size(0);
  TORCH_CHECK(r > 0, op, ": the rank of ", a_name, " must be positive, got shape ", A->sizes());
  check_shape(op, a_name, *A, {r, k}, k_name);
  check_dim(op, b_name, *B, 2);
  check_shape(op, b_name, *B, {out, r}, "[out_features, r]");
  check_same_dtype_device(op, a_name, *A, "x", x);
  check_same_dtype_device(op, b_name, *B, "x", x);
  return r;
}

HydraDims check_common(const char* op, const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                       const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s,
                       double dropout_p, const std::optional<at::Tensor>& dropout_seed) {
  const auto [rows, in, out] = check_linear_input(op, x, weight);
  const int64_t rp = check_branch(op, "A_p", "B_p", A_p, B_p, in, "[r_p, in_features]", out, x);
  const int64_t rs = check_branch(op, "A_s", "B_s", A_s, B_s, out, "[r_s, out_features]", out, x);
  check_dropout_p(op, dropout_p);
  check_dropout_seed(op, dropout_p, dropout_seed, x.device());
  return HydraDims{rows, in, out, rp, rs};
}

}  // namespace

HydraDims check_hydra_forward(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& A_p, const std::optional<at::Tensor>& B_p,
                              const std::optional<at::Tensor>& A_s, const std::optional<at::Tensor>& B_s,
                              double dropout_p, const std::optional<at::Tensor>& dropout_seed) {
  const HydraDims d = check_common("hydra_linear", x, weight, A_p, B_p, A_s, B_s, dropout_p, dropout_seed);
  check_linear_bias("hydra_linear", bias, d.out, x);
  return d;
}

HydraDims check_hydra_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& h, const std::optional<at::Tensor>& A_p,
                               const std::optional<at::Tensor>& B_p, const std::optional<at::Tensor>& A_s,
                               const std::optional<at::Tensor>& B_s, const at::Tensor& hidden_p,
                               const at::Tensor& hidden_s, double dropout_p,
                               const std::optional<at::Tensor>& dropout_seed) {
  constexpr const char* op = "hydra_linear_backward";
  const HydraDims d = check_common(op, x, weight, A_p, B_p, A_s, B_s, dropout_p, dropout_seed);
  const auto out_shape = with_last_dim(x, d.out);
  check_shape(op, "grad_out", grad_out, out_shape, "[..., out_features]");
  check_same_dtype_device(op, "grad_out", grad_out, "x", x);
  if (dropout_p == 0.0) {
    TORCH_CHECK(h.numel() == 0, op, ": without dropout h is not used and must be empty, got ", h.sizes());
  } else {
    check_shape(op, "h", h, {d.rows, d.out}, "[N, out_features]");
  }
  check_shape(op, "hidden_p", hidden_p, {d.rows, d.rank_p}, "[N, r_p]");
  check_shape(op, "hidden_s", hidden_s, {d.rows, d.rank_s}, "[N, r_s]");
  return d;
}

}  // namespace peftcore

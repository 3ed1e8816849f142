#include "bone/bone_checks.h"

#include "common/checks.h"

namespace peftcore {

BoneDims check_bone(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& up, int64_t r) {
  const auto [rows, in, out] = check_linear_input(op, x, weight);
  TORCH_CHECK(r >= 1 && r <= in, op, ": r must be in [1, in_features=", in, "], got ", r);
  check_dim(op, "up", up, 2);
  check_shape(op, "up", up, {out, r}, "[out_features, r]");
  check_same_dtype_device(op, "up", up, "x", x);
  return BoneDims{rows, in, out, r};
}

BoneDims check_bat(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& block) {
  const auto [rows, in, out] = check_linear_input(op, x, weight);
  check_dim(op, "block", block, 3);
  const int64_t r = block.size(-1);
  TORCH_CHECK(r > 0 && in % r == 0 && out % r == 0, op, ": the bat form needs in_features (", in,
              ") and out_features (", out, ") divisible by the block size r=", r);
  check_shape(op, "block", block, {out / r, r, r}, "[out_features / r, r, r]");
  check_same_dtype_device(op, "block", block, "x", x);
  return BoneDims{rows, in, out, r};
}

}  // namespace peftcore

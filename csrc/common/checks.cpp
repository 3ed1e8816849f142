#include "common/checks.h"

#include <c10/core/ScalarType.h>
#include <c10/util/accumulate.h>

namespace peftcore {

void check_dim(std::string_view op, std::string_view name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got an undefined tensor");
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ",
              t.sizes());
}

void check_shape(std::string_view op, std::string_view name, const at::Tensor& t,
                 at::IntArrayRef expected, std::string_view expected_desc) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must be ", expected_desc, "=", expected,
              ", got ", t.sizes());
}

void check_same_dtype_device(std::string_view op, std::string_view name, const at::Tensor& t,
                             std::string_view ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type(),
              "; all floating inputs must share one dtype");
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device(), "; all inputs must be on one device");
}

void check_floating(std::string_view op, std::string_view name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op,
              ": ", name, " must be float16, bfloat16, float32 or float64, got ", dt);
}

LinearDims check_linear_input(std::string_view op, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.defined() && x.dim() >= 1, op, ": x must have shape [..., in_features], got ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
  check_floating(op, "x", x);
  check_dim(op, "weight", weight, 2);
  const int64_t out = weight.size(0), in = weight.size(1);
  TORCH_CHECK(x.size(-1) == in, op, ": x must have shape [..., in_features=", in,
              "] to match weight [out_features, in_features]=", weight.sizes(), ", got ", x.sizes());
  check_same_dtype_device(op, "weight", weight, "x", x);
  return LinearDims{c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1), in, out};
}

void check_linear_bias(std::string_view op, const std::optional<at::Tensor>& bias, int64_t out,
                       const at::Tensor& x) {
  if (!bias.has_value() || !bias->defined()) return;
  check_dim(op, "bias", *bias, 1);
  check_shape(op, "bias", *bias, {out}, "[out_features]");
  check_same_dtype_device(op, "bias", *bias, "x", x);
}

void check_dropout_p(std::string_view op, double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, op, ": dropout_p must be in [0, 1), got ", p);
}

void check_dropout_seed(std::string_view op, double p, const std::optional<at::Tensor>& seed,
                        const at::Device& device) {
  if (p == 0.0) return;
  TORCH_CHECK(seed.has_value() && seed->defined(), op, ": dropout_p=", p,
              " needs dropout_seed, an int64 tensor of 2 elements; got None");
  TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() == 2, op,
              ": dropout_seed must be an int64 tensor of 2 elements, got dtype ",
              seed->scalar_type(), " and shape ", seed->sizes());
  TORCH_CHECK(seed->device() == device, op, ": dropout_seed is on ", seed->device(),
              " but the inputs are on ", device);
}

std::vector<int64_t> with_last_dim(const at::Tensor& x, int64_t last) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = last;
  return shape;
}

}  // namespace peftcore

// Argument validation shared by every op and backend. Each helper names the op
// and the argument in its message, with what it got and what it expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>
#include <vector>

namespace peftcore {

// `t` is a floating tensor with exactly `dim` dimensions.
void check_dim(std::string_view op, std::string_view name, const at::Tensor& t, int64_t dim);

// `t` has exactly the given shape; `expected_desc` spells it symbolically, e.g. "[r, in_features]".
void check_shape(std::string_view op, std::string_view name, const at::Tensor& t,
                 at::IntArrayRef expected, std::string_view expected_desc);

// `t` has the dtype and device of `ref` (named `ref_name`).
void check_same_dtype_device(std::string_view op, std::string_view name, const at::Tensor& t,
                             std::string_view ref_name, const at::Tensor& ref);

// float16, bfloat16, float32 or float64.
void check_floating(std::string_view op, std::string_view name, const at::Tensor& t);

// The input of a linear layer: x [..., in] floating, weight [out, in] with x's dtype
// and device. Returns N (the product of x's leading dimensions), in and out.
struct LinearDims {
  int64_t rows, in, out;
};
LinearDims check_linear_input(std::string_view op, const at::Tensor& x, const at::Tensor& weight);

// An optional bias of a linear layer: absent, or [out] with x's dtype and device.
void check_linear_bias(std::string_view op, const std::optional<at::Tensor>& bias, int64_t out,
                       const at::Tensor& x);

// Shape of a linear layer's output: x's leading dimensions followed by `last`.
std::vector<int64_t> with_last_dim(const at::Tensor& x, int64_t last);

// A dropout probability in [0, 1).
void check_dropout_p(std::string_view op, double p);

// When p > 0 the seed is an int64 tensor of 2 elements on `device`.
void check_dropout_seed(std::string_view op, double p, const std::optional<at::Tensor>& seed,
                        const at::Device& device);

}  // namespace peftcore

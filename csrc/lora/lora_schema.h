// The lora ops as C++ sees them: their names and signatures, shared by the autograd
// and autocast kernels (the schema strings are in lora_schema.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace peftcore {

inline constexpr char kLoraLinear[] = "peftcore::lora_linear";
using LoraLinearSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                         const std::optional<at::Tensor>&, const at::Tensor&,
                                                         const at::Tensor&, double, double,
                                                         const std::optional<at::Tensor>&);

inline constexpr char kLoraLinearBackward[] = "peftcore::lora_linear_backward";
using LoraLinearBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    double, double, const std::optional<at::Tensor>&, std::array<bool, 5>);

}  // namespace peftcore

// The hydra ops as C++ sees them: their names and signatures, shared by the
// autograd and autocast kernels (the schema strings are in hydra_schema.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace peftcore {

inline constexpr char kHydraLinear[] = "peftcore::hydra_linear";
using HydraLinearSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
    double, double, const std::optional<at::Tensor>&);

inline constexpr char kHydraLinearBackward[] = "peftcore::hydra_linear_backward";
using HydraLinearBackwardSig =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
        const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, double, double, double,
        const std::optional<at::Tensor>&, std::array<bool, 7>);

}  // namespace peftcore

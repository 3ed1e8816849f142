// Host-side dtype dispatch shared by the CPU and CUDA optimizer backends.
#pragma once

#include <ATen/Dispatch.h>

#include <type_traits>

namespace peftcore {

// The compute type of a parameter dtype: double for float64, float otherwise.
template <typename P>
using OptimCompute = std::conditional_t<std::is_same_v<P, double>, double, float>;

// Calls body.template operator()<P, G>() for a (param, grad) dtype pair: G == P, or
// a 16-bit G for a float32 (master) P; other pairs are rejected by the checks.
template <typename Body>
void dispatch_param_grad(at::ScalarType p, at::ScalarType g, const Body& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p, "param", [&] {
    using P = scalar_t;
    if (g == p) {
      body.template operator()<P, P>();
    } else {
      AT_DISPATCH_REDUCED_FLOATING_TYPES(g, "grad", [&] {
        if constexpr (std::is_same_v<P, float>) body.template operator()<P, scalar_t>();
      });
    }
  });
}

}  // namespace peftcore

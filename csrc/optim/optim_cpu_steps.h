// What the CPU optimizer steps (lamb_cpu.cpp, lars_cpu.cpp) share: the float32 or
// float64 entry points of the element loops built for this CPU (optim_cpu_kernels.h)
// and the host reads of per-step scalars.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <type_traits>

#include "optim/optim_cpu_kernels.h"
#include "optim/optim_dispatch.h"
#include "optim/optim_math.h"

namespace peftcore::optim_cpu {

using optim::LambScalars;

// The float32 or float64 entry points of the capability-dispatched loops.
template <typename C>
struct FastKernels {
  void (*lamb_moments)(const C*, const C*, C*, C*, int64_t, C, const LambScalars<C>&, double*, double*);
  void (*lamb_apply)(C*, const C*, const C*, int64_t, const LambScalars<C>&, C, C);
  void (*lars_norms)(const C*, const C*, int64_t, C, double*, double*);
  void (*lars_update)(C*, const C*, C*, int64_t, const LarsScalars<C>&);
};

template <typename C>
FastKernels<C> fast_kernels() {
  const OptimCpuKernels& k = optim_cpu_kernels();
  if constexpr (std::is_same_v<C, float>) {
    return {k.lamb_moments_f32, k.lamb_apply_f32, k.lars_norms_f32, k.lars_update_f32};
  } else {
    return {k.lamb_moments_f64, k.lamb_apply_f64, k.lars_norms_f64, k.lars_update_f64};
  }
}

inline double scalar_value(const at::Tensor& t) { return t.to(at::kDouble).item<double>(); }

inline bool skip_step(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && scalar_value(*found_inf) != 0.0;
}

template <typename P>
using Compute = OptimCompute<P>;

}  // namespace peftcore::optim_cpu

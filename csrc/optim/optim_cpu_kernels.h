// The float32 / float64 element loops of the CPU optimizer steps, compiled once
// per CPU capability (default, and AVX2+FMA on x86-64) and chosen at run time.
#pragma once

#include <cstdint>

#include "optim/optim_math.h"

namespace peftcore {

// LARS per-tensor scalars of one step.
template <typename C>
struct LarsScalars {
  C ratio, weight_decay, momentum, one_minus_dampening, divisor, neg_lr;
  bool adapt, use_momentum, first, nesterov;
};

struct OptimCpuKernels {
  void (*lamb_moments_f32)(const float* p, const float* g, float* m, float* v, int64_t n, float div,
                           const optim::LambScalars<float>& s, double* psq, double* usq);
  void (*lamb_moments_f64)(const double* p, const double* g, double* m, double* v, int64_t n,
                           double div, const optim::LambScalars<double>& s, double* psq, double* usq);
  void (*lamb_apply_f32)(float* p, const float* m, const float* v, int64_t n,
                         const optim::LambScalars<float>& s, float ratio, float neg_lr);
  void (*lamb_apply_f64)(double* p, const double* m, const double* v, int64_t n,
                         const optim::LambScalars<double>& s, double ratio, double neg_lr);
  void (*lars_norms_f32)(const float* p, const float* g, int64_t n, float div, double* psq, double* gsq);
  void (*lars_norms_f64)(const double* p, const double* g, int64_t n, double div, double* psq,
                         double* gsq);
  void (*lars_update_f32)(float* p, const float* g, float* buf, int64_t n, const LarsScalars<float>& s);
  void (*lars_update_f64)(double* p, const double* g, double* buf, int64_t n,
                          const LarsScalars<double>& s);
};

namespace cpu_default {
extern const OptimCpuKernels kOptimKernels;
}
namespace cpu_avx2 {
extern const OptimCpuKernels kOptimKernels;
}

// AVX2+FMA where the CPU has it (and it was compiled), the portable build otherwise.
const OptimCpuKernels& optim_cpu_kernels();

}  // namespace peftcore

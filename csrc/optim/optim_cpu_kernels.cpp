// Element loops of the CPU optimizer steps. This file is compiled once per CPU
// capability with PEFTCORE_CPU_NS naming the namespace (see CMakeLists.txt). It
// includes no torch headers and keeps its code in an anonymous namespace, so no
// inline function built for AVX2 can be picked by the linker for other code.
#include "optim/optim_cpu_kernels.h"
#include "optim/lane_loop.h"

#ifndef PEFTCORE_CPU_NS
#error "PEFTCORE_CPU_NS must name the capability namespace"
#endif

namespace peftcore::PEFTCORE_CPU_NS {
namespace {

// Scalars are copied to locals and pointers are restrict-qualified: a float store
// through m or v could otherwise alias the scalars, which blocks vectorisation.

template <typename C>
void lamb_moments(const C* __restrict p, const C* __restrict g, C* __restrict m, C* __restrict v,
                  int64_t n, C div, const optim::LambScalars<C>& scalars, double* psq, double* usq) {
  const optim::LambScalars<C> s = scalars;
  lane_loop<C>(n, psq, usq, [&](int64_t k, C& pa, C& ua) {
    C mk = m[k], vk = v[k];
    const C u = optim::lamb_moments(g[k] / div, p[k], mk, vk, s);
    m[k] = mk;
    v[k] = vk;
    pa += p[k] * p[k];
    ua += u * u;
  });
}

template <typename C>
void lamb_apply(C* __restrict p, const C* __restrict m, const C* __restrict v, int64_t n,
                const optim::LambScalars<C>& scalars, C ratio, C neg_lr) {
  const optim::LambScalars<C> s = scalars;
  for (int64_t k = 0; k < n; ++k) p[k] = p[k] + neg_lr * (optim::lamb_update(p[k], m[k], v[k], s) * ratio);
}

template <typename C>
void lars_norms(const C* __restrict p, const C* __restrict g, int64_t n, C div, double* psq,
                double* gsq) {
  lane_loop<C>(n, psq, gsq, [&](int64_t k, C& pa, C& ga) {
    const C gk = g[k] / div;
    pa += p[k] * p[k];
    ga += gk * gk;
  });
}

template <typename C>
void lars_update(C* __restrict p, const C* __restrict g, C* __restrict buf, int64_t n,
                 const LarsScalars<C>& scalars) {
  const LarsScalars<C> s = scalars;
  for (int64_t k = 0; k < n; ++k) {
    C d = g[k] / s.divisor;
    if (s.adapt) d = (d + s.weight_decay * p[k]) * s.ratio;
    if (s.use_momentum) {
      const C b = s.first ? d : buf[k] * s.momentum + s.one_minus_dampening * d;
      buf[k] = b;
      d = s.nesterov ? d + s.momentum * b : b;
    }
    p[k] = p[k] + s.neg_lr * d;
  }
}

}  // namespace

extern const OptimCpuKernels kOptimKernels;
const OptimCpuKernels kOptimKernels{
    &lamb_moments<float>, &lamb_moments<double>, &lamb_apply<float>, &lamb_apply<double>,
    &lars_norms<float>,   &lars_norms<double>,   &lars_update<float>, &lars_update<double>,
};

}  // namespace peftcore::PEFTCORE_CPU_NS

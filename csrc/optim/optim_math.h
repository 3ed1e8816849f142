// Per-element math of the fused LAMB and LARS steps, shared by the CPU and CUDA
// kernels (no torch headers). C is the compute type: float, or double for
// float64 parameters. The formulas follow timm's Lamb / Lars (python/peftcore/reference/optim.py).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace peftcore::optim {

PEFTCORE_HD_FN float root(float x) { return sqrtf(x); }
PEFTCORE_HD_FN double root(double x) { return ::sqrt(x); }

// Scalars of one LAMB step for one parameter group, all in the compute type.
template <typename C>
struct LambScalars {
  C beta1, beta2, beta3;   // beta3 = 1 - beta1 with grad averaging, else 1
  C one_minus_beta2;       // rounded from double, as torch rounds `1 - beta2` (not 1.f - beta2)
  C bias_correction1;      // 1 - beta1^step (1 without bias correction)
  C sqrt_bias_correction2; // sqrt(1 - beta2^step)
  C eps, weight_decay;
  bool lerp;               // grad averaging: m.lerp_(g, 1 - beta1), as timm does
};

// u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + wd * p
template <typename C>
PEFTCORE_HD_FN C lamb_update(C p, C m, C v, const LambScalars<C>& s) {
  const C denom = root(v) / s.sqrt_bias_correction2 + s.eps;
  C u = (m / s.bias_correction1) / denom;
  if (s.weight_decay != C(0)) u = u + s.weight_decay * p;
  return u;
}

// The hyper-parameters of one LAMB step of one group, as the host holds them.
struct LambHyper {
  double beta1, beta2, eps, weight_decay, phi_min, phi_max, min_trust;
  bool bias_correction, grad_averaging, adapt, trust_clip;
};

// The per-step scalars in the compute type. One-minus terms are rounded from
// double, as torch rounds `1 - beta` (a float `1.f - beta` differs by 5e-5 relative).
template <typename C>
PEFTCORE_HD_FN LambScalars<C> lamb_scalars(const LambHyper& h, double step) {
  LambScalars<C> s;
  s.beta1 = static_cast<C>(h.beta1);
  s.beta2 = static_cast<C>(h.beta2);
  s.beta3 = static_cast<C>(h.grad_averaging ? 1.0 - h.beta1 : 1.0);
  s.one_minus_beta2 = static_cast<C>(1.0 - h.beta2);
  s.lerp = h.grad_averaging;
  s.bias_correction1 = static_cast<C>(h.bias_correction ? 1.0 - pow(h.beta1, step) : 1.0);
  s.sqrt_bias_correction2 = static_cast<C>(h.bias_correction ? sqrt(1.0 - pow(h.beta2, step)) : 1.0);
  s.eps = static_cast<C>(h.eps);
  s.weight_decay = static_cast<C>(h.weight_decay);
  return s;
}

// m, v <- moments of the scaled gradient g; returns the update u (before the trust ratio).
template <typename C>
PEFTCORE_HD_FN C lamb_moments(C g, C p, C& m, C& v, const LambScalars<C>& s) {
  if (s.lerp) {
    m = m + s.beta3 * (g - m);
  } else {
    m = m * s.beta1 + s.beta3 * g;
  }
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  return lamb_update(p, m, v, s);
}

// phi(||p||) / ||u||, 1 when either is zero; trust_clip caps it at 1, min_trust floors it.
template <typename C>
PEFTCORE_HD_FN C lamb_trust_ratio(C param_norm, C update_norm, C phi_min, C phi_max, bool trust_clip,
                               C min_trust) {
  const C w = param_norm < phi_min ? phi_min : (param_norm > phi_max ? phi_max : param_norm);
  C ratio = (w > C(0) && update_norm > C(0)) ? w / update_norm : C(1);
  if (trust_clip && ratio > C(1)) ratio = C(1);
  if (ratio < min_trust) ratio = min_trust;
  return ratio;
}

// LARS local rate: trust_coeff ||p|| / (||g|| + wd ||p|| + eps), 1 when a norm is
// zero; trust_clip (LARC) gives min(ratio / lr, 1).
template <typename C>
PEFTCORE_HD_FN C lars_trust_ratio(C param_norm, C grad_norm, C trust_coeff, C weight_decay, C eps,
                               bool trust_clip, C lr) {
  C ratio = trust_coeff * param_norm / (grad_norm + param_norm * weight_decay + eps);
  if (!(param_norm > C(0) && grad_norm > C(0))) ratio = C(1);
  if (trust_clip) {
    ratio = ratio / lr;
    if (ratio > C(1)) ratio = C(1);
  }
  return ratio;
}

}  // namespace peftcore::optim

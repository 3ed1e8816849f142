// CPU backend of the multi-tensor optimizer ops: each stage is one parallel pass
// over the chunks of all tensors (multi_tensor_cpu.h); per-element math is in
// optim_math.h, shared with CUDA.
//
// LAMB: pass 1 updates m and v and reduces ||p||^2 and ||u||^2 per tensor without
// storing u; pass 2 recomputes u from (p, m, v) and applies p -= lr * ratio * u.
// Bytes per float32 parameter: 16 read + 8 written, then 12 read + 4 written.
#include <ATen/Dispatch.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "optim/multi_tensor_cpu.h"
#include "optim/optim_checks.h"
#include "optim/lane_loop.h"
#include "optim/optim_cpu_kernels.h"
#include "optim/optim_dispatch.h"
#include "optim/optim_math.h"

namespace peftcore {
namespace {

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

double scalar_value(const at::Tensor& t) { return t.to(at::kDouble).item<double>(); }

bool skip_step(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && scalar_value(*found_inf) != 0.0;
}

template <typename P>
using Compute = OptimCompute<P>;

// Per-tensor sums of squares (float64 accumulation), returned in `out_dtype`.
at::Tensor multi_tensor_sumsq_cpu(at::TensorList tensors) {
  const at::Device device = list_device(tensors);
  check_tensor_list("multi_tensor_sumsq", "tensors", tensors, tensors.size(), device);
  const auto chunks = make_chunks(tensors);
  std::vector<double> partials(chunks.size());
  parallel_chunks(chunks, [&](int64_t i, const TensorChunk& c) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tensors[c.tensor].scalar_type(), "sumsq", [&] {
      const scalar_t* x = tensors[c.tensor].const_data_ptr<scalar_t>() + c.begin;
      partials[i] = lane_sum(c.end - c.begin, [&](int64_t k) {
        const double v = static_cast<double>(x[k]);
        return v * v;
      });
    });
  });
  const auto totals = per_tensor_totals(chunks, partials, tensors.size());
  const bool any_double = std::any_of(tensors.begin(), tensors.end(),
                                      [](const at::Tensor& t) { return t.scalar_type() == at::kDouble; });
  at::Tensor out = at::empty({static_cast<int64_t>(tensors.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(totals.begin(), totals.end(), out.mutable_data_ptr<double>());
  return any_double ? out : out.to(at::kFloat);
}

void lamb_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                   at::TensorList exp_avg_sqs, at::TensorList model_params, const at::Tensor& lr,
                   const at::Tensor& step, const at::Tensor& grad_divisor,
                   const std::optional<at::Tensor>& found_inf, double beta1, double beta2,
                   double eps, double weight_decay, bool bias_correction, bool grad_averaging,
                   bool adapt, bool trust_clip, double phi_min, double phi_max, double min_trust) {
  check_lamb_step(params, grads, exp_avgs, exp_avg_sqs, model_params, lr, step, grad_divisor, found_inf);
  if (params.empty() || skip_step(found_inf)) return;
  const double step_v = scalar_value(step), lr_v = scalar_value(lr), div_v = scalar_value(grad_divisor);
  const optim::LambHyper hyper{beta1, beta2, eps, weight_decay, phi_min, phi_max, min_trust,
                               bias_correction, grad_averaging, adapt, trust_clip};
  const auto chunks = make_chunks(params);
  std::vector<double> param_sq(chunks.size()), update_sq(chunks.size());

  // Pass 1: moments, and the norms of p and u.
  parallel_chunks(chunks, [&](int64_t ci, const TensorChunk& c) {
    dispatch_param_grad(params[c.tensor].scalar_type(), grads[c.tensor].scalar_type(), [&]<typename P, typename G>() {
      using C = Compute<P>;
      const auto s = optim::lamb_scalars<C>(hyper, step_v);
      const C div = static_cast<C>(div_v);
      const P* p = params[c.tensor].const_data_ptr<P>() + c.begin;
      const G* g = grads[c.tensor].const_data_ptr<G>() + c.begin;
      C* m = exp_avgs[c.tensor].mutable_data_ptr<C>() + c.begin;
      C* v = exp_avg_sqs[c.tensor].mutable_data_ptr<C>() + c.begin;
      double psq = 0.0, usq = 0.0;
      const int64_t n = c.end - c.begin;
      if constexpr (std::is_same_v<P, G> && std::is_same_v<P, C>) {  // float32 / float64
        fast_kernels<C>().lamb_moments(p, g, m, v, n, div, s, &psq, &usq);
      } else {
        lane_loop<C>(n, &psq, &usq, [&](int64_t k, C& pa, C& ua) {
          const C pk = static_cast<C>(p[k]);
          C mk = m[k], vk = v[k];
          const C u = optim::lamb_moments(static_cast<C>(g[k]) / div, pk, mk, vk, s);
          m[k] = mk;
          v[k] = vk;
          pa += pk * pk;
          ua += u * u;
        });
      }
      param_sq[ci] = psq;
      update_sq[ci] = usq;
    });
  });
  const auto p_norm2 = per_tensor_totals(chunks, param_sq, params.size());
  const auto u_norm2 = per_tensor_totals(chunks, update_sq, params.size());

  // Pass 2: p -= lr * ratio * u, with u recomputed from (p, m, v).
  parallel_chunks(chunks, [&](int64_t, const TensorChunk& c) {
    dispatch_param_grad(params[c.tensor].scalar_type(), params[c.tensor].scalar_type(), [&]<typename P, typename>() {
      using C = Compute<P>;
      const auto s = optim::lamb_scalars<C>(hyper, step_v);
      const C ratio = adapt ? optim::lamb_trust_ratio<C>(std::sqrt(p_norm2[c.tensor]), std::sqrt(u_norm2[c.tensor]),
                                                         phi_min, phi_max, trust_clip, min_trust)
                            : C(1);
      const C neg_lr = static_cast<C>(-lr_v);
      P* p = params[c.tensor].mutable_data_ptr<P>() + c.begin;
      const C* m = exp_avgs[c.tensor].const_data_ptr<C>() + c.begin;
      const C* v = exp_avg_sqs[c.tensor].const_data_ptr<C>() + c.begin;
      if constexpr (std::is_same_v<P, C>) {
        fast_kernels<C>().lamb_apply(p, m, v, c.end - c.begin, s, ratio, neg_lr);
      } else {
        for (int64_t k = 0; k < c.end - c.begin; ++k) {
          const C pk = static_cast<C>(p[k]);
          const C u = optim::lamb_update(pk, m[k], v[k], s) * ratio;
          p[k] = static_cast<P>(pk + neg_lr * u);
        }
      }
    });
  });
  if (!model_params.empty()) at::_foreach_copy_(model_params, params);
}

void lars_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   at::TensorList model_params, const at::Tensor& lr, const at::Tensor& grad_divisor,
                   const std::optional<at::Tensor>& found_inf, const c10::List<bool>& fresh,
                   double momentum, double dampening, double weight_decay, bool nesterov,
                   double trust_coeff, double eps, bool trust_clip, bool adapt) {
  const bool use_momentum = momentum != 0.0;
  check_lars_step(params, grads, momentum_buffers, model_params, lr, grad_divisor, found_inf,
                  fresh.size(), use_momentum);
  if (params.empty() || skip_step(found_inf)) return;
  const double lr_v = scalar_value(lr), div_v = scalar_value(grad_divisor);
  const auto chunks = make_chunks(params);
  std::vector<double> p_norm2(params.size(), 0.0), g_norm2(params.size(), 0.0);
  if (adapt) {
    std::vector<double> param_sq(chunks.size()), grad_sq(chunks.size());
    parallel_chunks(chunks, [&](int64_t ci, const TensorChunk& c) {
      dispatch_param_grad(params[c.tensor].scalar_type(), grads[c.tensor].scalar_type(), [&]<typename P, typename G>() {
        using C = Compute<P>;
        const P* p = params[c.tensor].const_data_ptr<P>() + c.begin;
        const G* g = grads[c.tensor].const_data_ptr<G>() + c.begin;
        double psq = 0.0, gsq = 0.0;
        const C div = static_cast<C>(div_v);
        const int64_t n = c.end - c.begin;
        if constexpr (std::is_same_v<P, G> && std::is_same_v<P, C>) {
          fast_kernels<C>().lars_norms(p, g, n, div, &psq, &gsq);
        } else {
          lane_loop<C>(n, &psq, &gsq, [&](int64_t k, C& pa, C& ga) {
            const C pk = static_cast<C>(p[k]), gk = static_cast<C>(g[k]) / div;
            pa += pk * pk;
            ga += gk * gk;
          });
        }
        param_sq[ci] = psq;
        grad_sq[ci] = gsq;
      });
    });
    p_norm2 = per_tensor_totals(chunks, param_sq, params.size());
    g_norm2 = per_tensor_totals(chunks, grad_sq, params.size());
  }
  parallel_chunks(chunks, [&](int64_t, const TensorChunk& c) {
    dispatch_param_grad(params[c.tensor].scalar_type(), grads[c.tensor].scalar_type(), [&]<typename P, typename G>() {
      using C = Compute<P>;
      const C ratio = adapt ? optim::lars_trust_ratio<C>(std::sqrt(p_norm2[c.tensor]), std::sqrt(g_norm2[c.tensor]),
                                                         trust_coeff, weight_decay, eps, trust_clip, lr_v)
                            : C(1);
      LarsScalars<C> ls;
      ls.ratio = ratio;
      ls.weight_decay = static_cast<C>(weight_decay);
      ls.momentum = static_cast<C>(momentum);
      ls.one_minus_dampening = static_cast<C>(1.0 - dampening);
      ls.divisor = static_cast<C>(div_v);
      ls.neg_lr = static_cast<C>(-lr_v);
      ls.adapt = adapt;
      ls.use_momentum = use_momentum;
      ls.first = use_momentum && fresh.get(c.tensor);
      ls.nesterov = nesterov;
      P* p = params[c.tensor].mutable_data_ptr<P>() + c.begin;
      const G* g = grads[c.tensor].const_data_ptr<G>() + c.begin;
      C* buf = use_momentum ? momentum_buffers[c.tensor].mutable_data_ptr<C>() + c.begin : nullptr;
      if constexpr (std::is_same_v<P, G> && std::is_same_v<P, C>) {
        fast_kernels<C>().lars_update(p, g, buf, c.end - c.begin, ls);
      } else {
        for (int64_t k = 0; k < c.end - c.begin; ++k) {
          const C pk = static_cast<C>(p[k]);
          C d = static_cast<C>(g[k]) / ls.divisor;
          if (adapt) d = (d + ls.weight_decay * pk) * ratio;
          if (use_momentum) {
            buf[k] = ls.first ? d : buf[k] * ls.momentum + ls.one_minus_dampening * d;
            d = nesterov ? d + ls.momentum * buf[k] : buf[k];
          }
          p[k] = static_cast<P>(pk + ls.neg_lr * d);
        }
      }
    });
  });
  if (!model_params.empty()) at::_foreach_copy_(model_params, params);
}

}  // namespace

const OptimCpuKernels& optim_cpu_kernels() {
#if PEFTCORE_HAVE_AVX2_KERNELS
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return cpu_avx2::kOptimKernels;
#endif
  return cpu_default::kOptimKernels;
}

TORCH_LIBRARY_IMPL(peftcore, CPU, m) {
  m.impl("multi_tensor_sumsq", &multi_tensor_sumsq_cpu);
  m.impl("lamb_step_", &lamb_step_cpu);
  m.impl("lars_step_", &lars_step_cpu);
}

}  // namespace peftcore

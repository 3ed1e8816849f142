// CPU LAMB step (lamb_step_): each stage is one parallel pass over the chunks of all
// tensors (multi_tensor_cpu.h); per-element math is in optim_math.h, shared with
// CUDA. Pass 1 updates m and v and reduces ||p||^2 and ||u||^2 per tensor without
// storing u; pass 2 recomputes u from (p, m, v) and applies p -= lr * ratio * u.
// Bytes per float32 parameter: 16 read + 8 written, then 12 read + 4 written.
#include <ATen/Dispatch.h>
#include <ATen/ops/_foreach_copy.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "optim/lane_loop.h"
#include "optim/multi_tensor_cpu.h"
#include "optim/optim_checks.h"
#include "optim/optim_cpu_steps.h"

namespace peftcore {
namespace {

using namespace optim_cpu;

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

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CPU, m) { m.impl("lamb_step_", &lamb_step_cpu); }

}  // namespace peftcore

// CPU LARS step (lars_step_): SGD with momentum and a layer-wise trust ratio, each
// stage one parallel pass over the chunks of all tensors (multi_tensor_cpu.h);
// per-element math is in optim_math.h, shared with CUDA.
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

TORCH_LIBRARY_IMPL(peftcore, CPU, m) { m.impl("lars_step_", &lars_step_cpu); }

}  // namespace peftcore

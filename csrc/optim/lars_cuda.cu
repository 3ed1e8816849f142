// CUDA LARS step (lars_step_; kernels in optim_kernels.cuh).
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "optim/optim_checks.h"
#include "optim/optim_cuda_launch.h"
#include "optim/optim_dispatch.h"

namespace peftcore {
namespace {

using namespace optim_cuda;

void lars_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                    at::TensorList model_params, const at::Tensor& lr, const at::Tensor& grad_divisor,
                    const std::optional<at::Tensor>& found_inf, const c10::List<bool>& fresh,
                    double momentum, double dampening, double weight_decay, bool nesterov,
                    double trust_coeff, double eps, bool trust_clip, bool adapt) {
  const bool use_momentum = momentum != 0.0;
  check_lars_step(params, grads, momentum_buffers, model_params, lr, grad_divisor, found_inf,
                  fresh.size(), use_momentum);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor lr_f, div_f, inf_f;
  const float* lr_p = float_ptr(lr, lr_f);
  const float* div_p = float_ptr(grad_divisor, div_f);
  const float* inf_p = found_inf.has_value() ? float_ptr(*found_inf, inf_f) : nullptr;
  const k::LarsHyper h{momentum, dampening, weight_decay, trust_coeff, eps,
                       nesterov, trust_clip, adapt, use_momentum};
  const ChunkLayout layout = chunk_layout(params);
  const auto groups = dtype_groups(params, grads);
  // Norms are only needed when the trust ratio is applied.
  at::Tensor totals = at::zeros({2, static_cast<int64_t>(params.size())}, params[0].options().dtype(at::kDouble));
  if (adapt) {
    const at::Tensor partial =
        at::empty({2, std::max<int64_t>(layout.total, 1)}, params[0].options().dtype(at::kDouble));
    for (const auto& [types, idx] : groups) {
      std::vector<Entry<2>> entries;
      for (int64_t i : idx) {
        entries.push_back({{params[i].data_ptr(), grads[i].data_ptr()}, params[i].numel(),
                           static_cast<int32_t>(i), 0});
      }
      dispatch_param_grad(types.first, types.second, [&]<typename P, typename G>() {
        multi_tensor_apply<2>(entries, layout, [&](const k::ListMeta<2>& meta, int blocks) {
          k::lars_norms_kernel<P, G, OptimCompute<P>><<<blocks, k::kThreads, 0, stream>>>(
              meta, partial.data_ptr<double>(), partial.size(1), div_p, inf_p);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    }
    totals = chunk_totals(partial, layout, 2, stream);
  }
  for (const auto& [types, idx] : groups) {
    std::vector<Entry<3>> entries;
    for (int64_t i : idx) {
      void* buf = use_momentum ? momentum_buffers[i].data_ptr() : nullptr;
      entries.push_back({{params[i].data_ptr(), grads[i].data_ptr(), buf}, params[i].numel(),
                         static_cast<int32_t>(i), static_cast<uint8_t>(use_momentum && fresh.get(i))});
    }
    dispatch_param_grad(types.first, types.second, [&]<typename P, typename G>() {
      multi_tensor_apply<3>(entries, layout, [&](const k::ListMeta<3>& meta, int blocks) {
        k::lars_update_kernel<P, G, OptimCompute<P>><<<blocks, k::kThreads, 0, stream>>>(
            meta, totals.data_ptr<double>(), totals.size(1), lr_p, div_p, inf_p, h);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (!model_params.empty()) at::_foreach_copy_(model_params, params);
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) { m.impl("lars_step_", &lars_step_cuda); }

}  // namespace peftcore

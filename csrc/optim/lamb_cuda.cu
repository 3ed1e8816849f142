// CUDA LAMB step (lamb_step_; kernels in optim_kernels.cuh).
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

void lamb_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList model_params, const at::Tensor& lr,
                    const at::Tensor& step, const at::Tensor& grad_divisor,
                    const std::optional<at::Tensor>& found_inf, double beta1, double beta2,
                    double eps, double weight_decay, bool bias_correction, bool grad_averaging,
                    bool adapt, bool trust_clip, double phi_min, double phi_max, double min_trust) {
  check_lamb_step(params, grads, exp_avgs, exp_avg_sqs, model_params, lr, step, grad_divisor, found_inf);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor lr_f, step_f, div_f, inf_f;
  const float* lr_p = float_ptr(lr, lr_f);
  const float* step_p = float_ptr(step, step_f);
  const float* div_p = float_ptr(grad_divisor, div_f);
  const float* inf_p = found_inf.has_value() ? float_ptr(*found_inf, inf_f) : nullptr;
  const optim::LambHyper h{beta1, beta2, eps, weight_decay, phi_min, phi_max, min_trust,
                       bias_correction, grad_averaging, adapt, trust_clip};
  const ChunkLayout layout = chunk_layout(params);
  const at::Tensor partial =
      at::empty({2, std::max<int64_t>(layout.total, 1)}, params[0].options().dtype(at::kDouble));
  const auto groups = dtype_groups(params, grads);

  for (const auto& [types, idx] : groups) {
    std::vector<Entry<4>> entries;
    for (int64_t i : idx) {
      entries.push_back({{params[i].data_ptr(), grads[i].data_ptr(), exp_avgs[i].data_ptr(),
                          exp_avg_sqs[i].data_ptr()},
                         params[i].numel(), static_cast<int32_t>(i), 0});
    }
    dispatch_param_grad(types.first, types.second, [&]<typename P, typename G>() {
      multi_tensor_apply<4>(entries, layout, [&](const k::ListMeta<4>& meta, int blocks) {
        k::lamb_moments_kernel<P, G, OptimCompute<P>><<<blocks, k::kThreads, 0, stream>>>(
            meta, partial.data_ptr<double>(), partial.size(1), step_p, div_p, inf_p, h);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const at::Tensor totals = chunk_totals(partial, layout, 2, stream);
  for (const auto& [types, idx] : groups) {
    std::vector<Entry<3>> entries;
    for (int64_t i : idx) {
      entries.push_back({{params[i].data_ptr(), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr()},
                         params[i].numel(), static_cast<int32_t>(i), 0});
    }
    dispatch_param_grad(types.first, types.first, [&]<typename P, typename>() {
      multi_tensor_apply<3>(entries, layout, [&](const k::ListMeta<3>& meta, int blocks) {
        k::lamb_apply_kernel<P, OptimCompute<P>><<<blocks, k::kThreads, 0, stream>>>(
            meta, totals.data_ptr<double>(), totals.size(1), lr_p, step_p, inf_p, h);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (!model_params.empty()) at::_foreach_copy_(model_params, params);
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) { m.impl("lamb_step_", &lamb_step_cuda); }

}  // namespace peftcore

// CUDA backend of the multi-tensor optimizer ops (kernels in optim_kernels.cuh).
// Host code only builds launch metadata; every per-step scalar stays on the
// device, so a step never waits for the GPU.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <map>
#include <vector>

#include "optim/optim_checks.h"
#include "optim/optim_dispatch.h"
#include "optim/multi_tensor_meta.h"
#include "optim/optim_kernels.cuh"

namespace peftcore {
namespace {

namespace k = optim_kernels;

using k::ChunkLayout;
using k::Entry;
using k::multi_tensor_apply;

ChunkLayout chunk_layout(at::TensorList tensors) {
  std::vector<int64_t> numels;
  for (const at::Tensor& t : tensors) numels.push_back(t.numel());
  return k::chunk_layout(numels);
}

// Per-tensor totals of `rows` rows of per-chunk partials, in chunk order.
at::Tensor chunk_totals(const at::Tensor& partial, const ChunkLayout& layout, int rows,
                        cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(layout.n_chunks.size());
  at::Tensor totals = at::zeros({rows, n}, partial.options());
  k::for_each_totals_batch(layout, [&](const k::TotalsMeta& meta) {
    k::chunk_totals_kernel<<<(meta.count + 127) / 128, 128, 0, stream>>>(
        partial.data_ptr<double>(), partial.size(1), totals.data_ptr<double>(), n, rows, meta);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return totals;
}

// Indices of the tensors of each (param dtype, grad dtype) pair: one launch layout each.
std::map<std::pair<at::ScalarType, at::ScalarType>, std::vector<int64_t>> dtype_groups(
    at::TensorList params, at::TensorList grads) {
  std::map<std::pair<at::ScalarType, at::ScalarType>, std::vector<int64_t>> groups;
  for (size_t i = 0; i < params.size(); ++i) {
    groups[{params[i].scalar_type(), grads[i].scalar_type()}].push_back(static_cast<int64_t>(i));
  }
  return groups;
}

const float* float_ptr(const at::Tensor& t, at::Tensor& keep) {
  keep = t.to(at::kFloat).contiguous();
  return keep.data_ptr<float>();
}

at::Tensor multi_tensor_sumsq_cuda(at::TensorList tensors) {
  const at::Device device = list_device(tensors);
  check_tensor_list("multi_tensor_sumsq", "tensors", tensors, tensors.size(), device);
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const ChunkLayout layout = chunk_layout(tensors);
  const at::Tensor partial =
      at::empty({1, std::max<int64_t>(layout.total, 1)}, tensors[0].options().dtype(at::kDouble));
  for (const auto& [types, idx] : dtype_groups(tensors, tensors)) {
    std::vector<Entry<1>> entries;
    for (int64_t i : idx) entries.push_back({{tensors[i].data_ptr()}, tensors[i].numel(), static_cast<int32_t>(i), 0});
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, types.first, "sumsq_cuda", [&] {
      multi_tensor_apply<1>(entries, layout, [&](const k::ListMeta<1>& meta, int blocks) {
        k::sumsq_kernel<scalar_t><<<blocks, k::kThreads, 0, stream>>>(meta, partial.data_ptr<double>(), layout.total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const at::Tensor totals = chunk_totals(partial, layout, 1, stream)[0];
  const bool any_double = std::any_of(tensors.begin(), tensors.end(),
                                      [](const at::Tensor& t) { return t.scalar_type() == at::kDouble; });
  return any_double ? totals : totals.to(at::kFloat);
}

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

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) {
  m.impl("multi_tensor_sumsq", &multi_tensor_sumsq_cuda);
  m.impl("lamb_step_", &lamb_step_cuda);
  m.impl("lars_step_", &lars_step_cuda);
}

}  // namespace peftcore

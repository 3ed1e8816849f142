// What the CUDA optimizer ops (lamb_cuda.cu, lars_cuda.cu, sumsq_cuda.cu) share:
// launch layouts over all tensors, per-tensor totals of per-chunk partials, and the
// grouping of tensors by dtype. Host code only builds launch metadata; every
// per-step scalar stays on the device, so a step never waits for the GPU.
// Included by .cu files only.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>

#include <map>
#include <utility>
#include <vector>

#include "optim/multi_tensor_meta.h"
#include "optim/optim_kernels.cuh"

namespace peftcore::optim_cuda {

namespace k = optim_kernels;

using k::ChunkLayout;
using k::Entry;
using k::multi_tensor_apply;

inline ChunkLayout chunk_layout(at::TensorList tensors) {
  std::vector<int64_t> numels;
  for (const at::Tensor& t : tensors) numels.push_back(t.numel());
  return k::chunk_layout(numels);
}

// Per-tensor totals of `rows` rows of per-chunk partials, in chunk order.
inline at::Tensor chunk_totals(const at::Tensor& partial, const ChunkLayout& layout, int rows,
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
inline std::map<std::pair<at::ScalarType, at::ScalarType>, std::vector<int64_t>> dtype_groups(
    at::TensorList params, at::TensorList grads) {
  std::map<std::pair<at::ScalarType, at::ScalarType>, std::vector<int64_t>> groups;
  for (size_t i = 0; i < params.size(); ++i) {
    groups[{params[i].scalar_type(), grads[i].scalar_type()}].push_back(static_cast<int64_t>(i));
  }
  return groups;
}

inline const float* float_ptr(const at::Tensor& t, at::Tensor& keep) {
  keep = t.to(at::kFloat).contiguous();
  return keep.data_ptr<float>();
}

}  // namespace peftcore::optim_cuda

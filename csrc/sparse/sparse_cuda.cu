// CUDA backend of composable sparse deltas. The union of all index lists and the
// summed values come from one stable sort and one segment sum over every parameter
// at once (sparse_merge.h: a fixed number of host reads, not a few per parameter, which
// on an H200 lost to a plain index_add_ loop); one launch over
// every parameter then saves the originals and adds the delta.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "sparse/sparse_checks.h"
#include "sparse/sparse_kernels.cuh"
#include "sparse/sparse_merge.h"

namespace peftcore {
namespace {

namespace sk = sparse_kernels;

int64_t elem_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return sk::kF32;
    case at::kDouble: return sk::kF64;
    case at::kHalf: return sk::kF16;
    case at::kBFloat16: return sk::kBF16;
    default: TORCH_CHECK(false, "sparse ops: unsupported parameter dtype ", t);
  }
  return -1;
}

at::Tensor device_table(const std::vector<int64_t>& words, const at::Device& device) {
  return at::tensor(words, at::TensorOptions().dtype(at::kLong)).to(device);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> sparse_compose_cuda(
    at::TensorList params, at::TensorList indices, at::TensorList values, at::IntArrayRef owner,
    at::ArrayRef<double> weights) {
  const auto parts = check_sparse_compose(params, indices, values, owner, weights);
  const size_t n = params.size();
  std::vector<at::Tensor> unions(n), originals(n);
  if (n == 0) return {unions, originals};
  const c10::cuda::CUDAGuard guard(params[0].device());
  // All validation happens here, before any parameter is written.
  const MergedDeltas merged = merge_sparse_parts("sparse_compose_", params, indices, values, weights, parts);
  const int64_t total = merged.keys.numel();
  at::Tensor local = at::empty({total}, merged.keys.options());
  std::vector<int64_t> param_ptr(n), orig_ptr(n), code(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t start = merged.bounds[i], count = merged.bounds[i + 1] - start;
    unions[i] = local.narrow(0, start, count);
    originals[i] = at::empty({count}, params[i].options());
    param_ptr[i] = reinterpret_cast<int64_t>(params[i].data_ptr());
    orig_ptr[i] = reinterpret_cast<int64_t>(originals[i].data_ptr());
    code[i] = elem_code(params[i].scalar_type());
  }
  if (total == 0) return {unions, originals};
  const at::Tensor dev_table = device_table(
      sk::compose_table(merged.bounds, merged.key_offsets, param_ptr, orig_ptr, code), params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto acc_zero) {  // the sums' dtype: float, or double if any param is
    using Acc = decltype(acc_zero);
    sk::compose_all_kernel<Acc, at::Half, at::BFloat16><<<sk::grid_for(total), 256, 0, stream>>>(
        dev_table.const_data_ptr<int64_t>(), static_cast<int>(n), merged.keys.const_data_ptr<int64_t>(),
        merged.sums.const_data_ptr<Acc>(), local.mutable_data_ptr<int64_t>(), total);
  };
  merged.acc == at::kDouble ? launch(0.0) : launch(0.0f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {unions, originals};
}

void sparse_revert_cuda(at::TensorList params, at::TensorList indices, at::TensorList originals) {
  check_sparse_revert(params, indices, originals);
  const size_t n = params.size();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  std::vector<at::Tensor> keep;  // contiguous copies (if any) live until the launches are queued
  std::vector<int64_t> seg(1, 0), param_ptr, index_ptr, orig_ptr, numel, size;
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(params[i].device() == params[0].device(), "sparse_revert_: all parameters must be on one "
                "device, got params[0] on ", params[0].device(), " and params[", i, "] on ", params[i].device());
    keep.push_back(indices[i].contiguous());
    keep.push_back(originals[i].contiguous());
    seg.push_back(seg.back() + indices[i].numel());
    param_ptr.push_back(reinterpret_cast<int64_t>(params[i].data_ptr()));
    index_ptr.push_back(reinterpret_cast<int64_t>(keep[2 * i].data_ptr()));
    orig_ptr.push_back(reinterpret_cast<int64_t>(keep[2 * i + 1].data_ptr()));
    numel.push_back(params[i].numel());
    size.push_back(static_cast<int64_t>(params[i].element_size()));
  }
  const int64_t total = seg.back();
  if (total == 0) return;
  const at::Tensor dev_table =
      device_table(sk::revert_table(seg, param_ptr, index_ptr, orig_ptr, numel, size), params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // A bad handle must not write: the range check of every list (one host read) first.
  at::Tensor bad = at::zeros({1}, params[0].options().dtype(at::kInt));
  sk::revert_all_kernel<true><<<sk::grid_for(total), 256, 0, stream>>>(
      dev_table.const_data_ptr<int64_t>(), static_cast<int>(n), total, bad.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (bad.item<int>() != 0) {
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(indices[i].numel() == 0 || (indices[i].min().item<int64_t>() >= 0 &&
                                              indices[i].max().item<int64_t>() < params[i].numel()),
                  "sparse_revert_: indices[", i, "] has values outside [0, ", params[i].numel(), ")");
    }
  }
  sk::revert_all_kernel<false><<<sk::grid_for(total), 256, 0, stream>>>(dev_table.const_data_ptr<int64_t>(),
                                                                    static_cast<int>(n), total, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) {
  m.impl("sparse_compose_", &sparse_compose_cuda);
  m.impl("sparse_revert_", &sparse_revert_cuda);
}

}  // namespace peftcore

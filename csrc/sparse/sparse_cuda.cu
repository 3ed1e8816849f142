// CUDA backend of composable sparse deltas. The union of the index lists and the
// summed values come from a stable sort and a segment sum (deterministic); one
// kernel then saves the originals and adds the delta. Validation reads two
// scalars back to the host: applying a delta is not a per-step operation.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/segment_reduce.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "sparse/sparse_checks.h"

namespace peftcore {
namespace {

template <typename T, typename Acc>
__global__ void compose_kernel(T* __restrict__ p, const int64_t* __restrict__ idx,
                               const Acc* __restrict__ delta, T* __restrict__ orig, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const T old = p[idx[i]];
  orig[i] = old;
  p[idx[i]] = static_cast<T>(static_cast<Acc>(old) + delta[i]);
}

template <typename T>
__global__ void revert_kernel(T* __restrict__ p, const int64_t* __restrict__ idx,
                              const T* __restrict__ orig, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p[idx[i]] = orig[i];
}

void check_sorted_in_range(const char* op, const at::Tensor& idx, int64_t numel, size_t which) {
  if (idx.numel() == 0) return;
  TORCH_CHECK(idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < numel, op,
              ": indices[", which, "] has values outside [0, ", numel, ")");
  if (idx.numel() > 1) {
    const bool increasing =
        idx.narrow(0, 1, idx.numel() - 1).gt(idx.narrow(0, 0, idx.numel() - 1)).all().item<bool>();
    TORCH_CHECK(increasing, op, ": indices[", which, "] must be strictly increasing");
  }
}

std::tuple<at::Tensor, at::Tensor> sparse_compose_cuda(const at::Tensor& param, at::TensorList indices,
                                                       at::TensorList values,
                                                       at::ArrayRef<double> weights) {
  check_sparse_compose(param, indices, values, weights.vec());
  const c10::cuda::CUDAGuard guard(param.device());
  const auto acc = param.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> idx_parts, val_parts;
  for (size_t i = 0; i < indices.size(); ++i) {
    check_sorted_in_range("sparse_compose_", indices[i], param.numel(), i);
    idx_parts.push_back(indices[i]);
    val_parts.push_back(values[i].to(acc).mul(weights[i]));
  }
  at::Tensor union_idx, delta;
  if (indices.size() == 1) {
    union_idx = indices[0].contiguous();
    delta = val_parts[0].contiguous();
  } else {
    const auto [sorted, perm] = at::sort(at::cat(idx_parts), /*stable=*/true, 0, false);
    const auto [uniq, inverse, counts] = at::unique_consecutive(sorted, false, true);
    union_idx = uniq;
    delta = at::segment_reduce(at::cat(val_parts).index_select(0, perm), "sum", /*path=*/std::nullopt,
                               counts);
  }
  const int64_t n = union_idx.numel();
  at::Tensor originals = at::empty({n}, param.options());
  if (n == 0) return {union_idx, originals};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>((n + 255) / 256);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_compose_cuda", [&] {
    using Acc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    compose_kernel<scalar_t, Acc><<<blocks, 256, 0, stream>>>(
        param.mutable_data_ptr<scalar_t>(), union_idx.const_data_ptr<int64_t>(),
        delta.const_data_ptr<Acc>(), originals.mutable_data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {union_idx, originals};
}

void sparse_revert_cuda(const at::Tensor& param, const at::Tensor& indices, const at::Tensor& originals) {
  check_sparse_revert(param, indices, originals);
  const c10::cuda::CUDAGuard guard(param.device());
  const int64_t n = indices.numel();
  if (n == 0) return;
  TORCH_CHECK(indices.min().item<int64_t>() >= 0 && indices.max().item<int64_t>() < param.numel(),
              "sparse_revert_: indices has values outside [0, ", param.numel(), ")");
  const at::Tensor ix = indices.contiguous(), orig = originals.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_revert_cuda", [&] {
    revert_kernel<scalar_t><<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
        param.mutable_data_ptr<scalar_t>(), ix.const_data_ptr<int64_t>(),
        orig.const_data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) {
  m.impl("sparse_compose_", &sparse_compose_cuda);
  m.impl("sparse_revert_", &sparse_revert_cuda);
}

}  // namespace peftcore

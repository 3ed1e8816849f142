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

#include <algorithm>
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

// One parameter: the union of its parts and the summed delta (stable sort + segment sum).
std::pair<at::Tensor, at::Tensor> merge_parts(const at::Tensor& param, const std::vector<int64_t>& parts,
                                              at::TensorList indices, at::TensorList values,
                                              at::ArrayRef<double> weights) {
  const auto acc = param.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> idx_parts, val_parts;
  for (int64_t j : parts) {
    check_sorted_in_range("sparse_compose_", indices[j], param.numel(), static_cast<size_t>(j));
    idx_parts.push_back(indices[j]);
    val_parts.push_back(values[j].to(acc).mul(weights[j]));
  }
  if (parts.size() == 1) return {indices[parts[0]].contiguous().clone(), val_parts[0].contiguous()};
  if (std::all_of(idx_parts.begin(), idx_parts.end(), [](const at::Tensor& t) { return t.numel() == 0; })) {
    return {at::empty({0}, param.options().dtype(at::kLong)), at::empty({0}, param.options().dtype(acc))};
  }
  const auto [sorted, perm] = at::sort(at::cat(idx_parts), /*stable=*/true, 0, false);
  const auto [uniq, inverse, counts] = at::unique_consecutive(sorted, false, true);
  return {uniq, at::segment_reduce(at::cat(val_parts).index_select(0, perm), "sum",
                                   /*lengths=*/counts)};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> sparse_compose_cuda(
    at::TensorList params, at::TensorList indices, at::TensorList values, at::IntArrayRef owner,
    at::ArrayRef<double> weights) {
  const auto parts = check_sparse_compose(params, indices, values, owner, weights);
  const size_t n = params.size();
  std::vector<at::Tensor> unions(n), deltas(n), originals(n);
  for (size_t i = 0; i < n; ++i) {  // all validation before any write
    if (parts[i].empty()) continue;
    const c10::cuda::CUDAGuard guard(params[i].device());
    std::tie(unions[i], deltas[i]) = merge_parts(params[i], parts[i], indices, values, weights);
  }
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& param = params[i];
    if (parts[i].empty()) {
      unions[i] = at::empty({0}, param.options().dtype(at::kLong));
      originals[i] = at::empty({0}, param.options());
      continue;
    }
    const c10::cuda::CUDAGuard guard(param.device());
    const int64_t count = unions[i].numel();
    originals[i] = at::empty({count}, param.options());
    if (count == 0) continue;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const unsigned blocks = static_cast<unsigned>((count + 255) / 256);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_compose_cuda", [&] {
      using Acc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      compose_kernel<scalar_t, Acc><<<blocks, 256, 0, stream>>>(
          param.mutable_data_ptr<scalar_t>(), unions[i].const_data_ptr<int64_t>(),
          deltas[i].const_data_ptr<Acc>(), originals[i].mutable_data_ptr<scalar_t>(), count);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {unions, originals};
}

void sparse_revert_cuda(at::TensorList params, at::TensorList indices, at::TensorList originals) {
  check_sparse_revert(params, indices, originals);
  for (size_t i = 0; i < params.size(); ++i) {
    if (indices[i].numel() == 0) continue;
    TORCH_CHECK(indices[i].min().item<int64_t>() >= 0 && indices[i].max().item<int64_t>() < params[i].numel(),
                "sparse_revert_: indices[", i, "] has values outside [0, ", params[i].numel(), ")");
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t count = indices[i].numel();
    if (count == 0) continue;
    const c10::cuda::CUDAGuard guard(params[i].device());
    const at::Tensor ix = indices[i].contiguous(), orig = originals[i].contiguous();
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(), "sparse_revert_cuda", [&] {
      revert_kernel<scalar_t><<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(
          params[i].mutable_data_ptr<scalar_t>(), ix.const_data_ptr<int64_t>(),
          orig.const_data_ptr<scalar_t>(), count);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) {
  m.impl("sparse_compose_", &sparse_compose_cuda);
  m.impl("sparse_revert_", &sparse_revert_cuda);
}

}  // namespace peftcore

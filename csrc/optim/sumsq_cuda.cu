// CUDA multi_tensor_sumsq (kernels in optim_kernels.cuh).
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

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) { m.impl("multi_tensor_sumsq", &multi_tensor_sumsq_cuda); }

}  // namespace peftcore

// Host side of the tensor-core skinny kernels: eligibility, launches with the
// geometry of skinny_tc_plan.h, the float32 partials and their ordered sum.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/gpu_paths.h"
#include "lora/cuda_launch.h"
#include "lora/skinny_tc.h"
#include "lora/skinny_tc_kernels.cuh"
#include "lora/skinny_tc_plan.h"

namespace peftcore {
namespace {

namespace k = skinny_tc;

// float32 partials [splits, a, b] that every block writes whole (no zeroing needed).
at::Tensor partials(int64_t splits, int64_t a, int64_t b, const at::Tensor& like) {
  return at::empty({splits, a, b}, like.options().dtype(at::kFloat));
}

// A small operand read in 16-byte vectors: contiguous and 16-byte aligned (a view at
// an odd offset is copied; the copy is a fresh, aligned allocation).
at::Tensor vector_ready(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// c10's 16-bit types and CUDA's have the same layout; the kernels use CUDA's.
template <typename T>
using CudaType = std::conditional_t<std::is_same_v<T, at::BFloat16>, __nv_bfloat16, __half>;

template <typename T>
const CudaType<T>* as_cuda(const at::Tensor& t) {
  return reinterpret_cast<const CudaType<T>*>(t.const_data_ptr<T>());
}

// out (+ strides) = scale * Σ_splits partial, rounded once to out's dtype.
template <typename T>
void sum_partials(const at::Tensor& partial, int64_t rows, int64_t cols, double scale, at::Tensor& out,
                  int64_t out_row_stride, int64_t out_col_stride, cudaStream_t stream) {
  const unsigned blocks = k::sum_blocks(rows * cols, sm_count(out.device()));
  k::sum_partials_kernel<CudaType<T>><<<blocks, 256, 0, stream>>>(
      partial.const_data_ptr<float>(), partial.size(0), partial.stride(0), partial.stride(1), rows, cols,
      static_cast<float>(scale), reinterpret_cast<CudaType<T>*>(out.mutable_data_ptr<T>()), out_row_stride,
      out_col_stride);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool tc_skinny_applies(const at::Tensor& big, int64_t rank) {
  if (!tc_skinny_enabled() || !big.is_cuda() || big.dim() != 2) return false;
  if (big.scalar_type() != at::kBFloat16 && big.scalar_type() != at::kHalf) return false;
  if (rank < 1 || rank > k::kMaxRank) return false;
  if (big.stride(1) != 1 || big.size(1) % 8 != 0 || big.stride(0) % 8 != 0) return false;
  if (reinterpret_cast<uintptr_t>(big.const_data_ptr()) % 16 != 0) return false;
  return at::cuda::getDeviceProperties(big.device().index())->major >= 8;
}

at::Tensor tc_shrink(const at::Tensor& x, const at::Tensor& w, double scale, const DropoutSpec* dropout) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1), rank = w.size(0);
  at::Tensor out = at::empty({rows, rank}, x.options());
  if (rows == 0) return out;
  if (cols == 0) return out.zero_();
  const at::Tensor wc = vector_ready(w);
  const k::ShrinkPlan plan = k::shrink_plan(rows, cols, rank, sm_count(x.device()));
  const at::Tensor partial = partials(plan.split.count, plan.padded_rows, plan.padded_rank, x);
  const KernelDropout drop = kernel_dropout(dropout);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "tc_shrink", [&] {
    k::shrink_kernel<CudaType<scalar_t>><<<dim3(plan.row_blocks, plan.split.count), k::kThreads, 0, stream>>>(
        as_cuda<scalar_t>(x), x.stride(0), rows, cols, as_cuda<scalar_t>(wc), static_cast<int>(rank),
        plan.k_per_split(), partial.mutable_data_ptr<float>(), plan.padded_rows, drop.device);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials<scalar_t>(partial, rows, rank, scale, out, rank, 1, stream);
  });
  return out;
}

at::Tensor tc_outer(const at::Tensor& l, const at::Tensor& big, const DropoutSpec* dropout, bool transposed) {
  const c10::cuda::CUDAGuard guard(big.device());
  const int64_t rows = big.size(0), cols = big.size(1), rank = l.size(1);
  at::Tensor out = transposed ? at::empty({cols, rank}, big.options()) : at::empty({rank, cols}, big.options());
  if (rows == 0 || cols == 0) return out.zero_();
  const at::Tensor lc = l.contiguous();
  const k::OuterPlan plan = k::outer_plan(rows, cols, rank, sm_count(big.device()));
  const at::Tensor partial = partials(plan.slabs.count, plan.padded_rank, plan.padded_cols, big);
  const KernelDropout drop = kernel_dropout(dropout);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(big.scalar_type(), "tc_outer", [&] {
    k::outer_kernel<CudaType<scalar_t>><<<dim3(plan.col_blocks, plan.slabs.count), k::kThreads, 0, stream>>>(
        as_cuda<scalar_t>(lc), static_cast<int>(rank), as_cuda<scalar_t>(big), big.stride(0), rows, cols,
        plan.rows_per_slab(), partial.mutable_data_ptr<float>(), plan.padded_cols, drop.device);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials<scalar_t>(partial, rank, cols, 1.0, out, transposed ? 1 : cols, transposed ? rank : 1, stream);
  });
  return out;
}

void tc_expand(const at::Tensor& t, const at::Tensor& a, const DropoutSpec* dropout, at::Tensor& out,
               bool accumulate) {
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t rows = out.size(0), cols = out.size(1), rank = t.size(1);
  if (rows == 0 || cols == 0) return;
  const at::Tensor tc = t.contiguous(), ac = vector_ready(a);
  const KernelDropout drop = kernel_dropout(dropout);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid = k::expand_grid(rows, cols);
  AT_DISPATCH_REDUCED_FLOATING_TYPES(out.scalar_type(), "tc_expand", [&] {
    k::expand_kernel<CudaType<scalar_t>><<<grid, k::kThreads, 0, stream>>>(
        as_cuda<scalar_t>(tc), static_cast<int>(rank), as_cuda<scalar_t>(ac), rows, cols,
        reinterpret_cast<CudaType<scalar_t>*>(out.mutable_data_ptr<scalar_t>()), accumulate, drop.device);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace peftcore

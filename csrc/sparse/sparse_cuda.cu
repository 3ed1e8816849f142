// CUDA backend of composable sparse deltas. The union of all index lists and the
// summed values come from one stable sort and one segment sum over every parameter
// at once (sparse_merge.h: a fixed number of host reads, not a few per parameter,
// which measured 10x slower than an index_add_ loop on an H200); one launch over
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
#include "sparse/sparse_merge.h"

namespace peftcore {
namespace {

// The parameters of one call are described to a single kernel by a table of int64
// words in device memory (pointers, offsets, dtypes): one launch for the whole
// model, whatever the number of parameters (a launch per parameter measured 2x
// slower than an index_add_ loop on an H200). Thread t finds its parameter by
// binary search in the segment starts.
enum ElemCode : int64_t { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

int64_t elem_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "sparse ops: unsupported parameter dtype ", t);
  }
  return -1;
}

// seg[0..n]: segment starts; returns the i with seg[i] <= t < seg[i + 1] (segments
// may be empty; the last start <= t is the non-empty one holding t).
__device__ __forceinline__ int find_segment(const int64_t* seg, int n, int64_t t) {
  int lo = 0, hi = n;  // invariant: seg[lo] <= t < seg[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (seg[mid] <= t) lo = mid; else hi = mid;
  }
  return lo;
}

template <typename T, typename Acc>
__device__ __forceinline__ void add_saving(int64_t param, int64_t orig, int64_t local, int64_t j, Acc d) {
  T* p = reinterpret_cast<T*>(param);
  const T old = p[local];
  reinterpret_cast<T*>(orig)[j] = old;
  p[local] = static_cast<T>(static_cast<Acc>(old) + d);
}

// table: seg[n + 1] | key_offset[n + 1] | param_ptr[n] | orig_ptr[n] | elem_code[n]
template <typename Acc>
__global__ void compose_all_kernel(const int64_t* __restrict__ table, int n, const int64_t* __restrict__ keys,
                                   const Acc* __restrict__ sums, int64_t* __restrict__ local_out, int64_t total) {
  const int64_t *seg = table, *key_offset = table + n + 1, *param = table + 2 * n + 2, *orig = table + 3 * n + 2,
                *code = table + 4 * n + 2;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = find_segment(seg, n, t);
    const int64_t local = keys[t] - key_offset[i], j = t - seg[i];
    local_out[t] = local;
    switch (code[i]) {
      case kF32: add_saving<float>(param[i], orig[i], local, j, sums[t]); break;
      case kF64: add_saving<double>(param[i], orig[i], local, j, sums[t]); break;
      case kF16: add_saving<at::Half>(param[i], orig[i], local, j, sums[t]); break;
      default: add_saving<at::BFloat16>(param[i], orig[i], local, j, sums[t]); break;
    }
  }
}

template <typename Word>
__device__ __forceinline__ void copy_back(int64_t param, int64_t orig, int64_t local, int64_t j) {
  reinterpret_cast<Word*>(param)[local] = reinterpret_cast<const Word*>(orig)[j];
}

// table: seg[n + 1] | param_ptr[n] | index_ptr[n] | orig_ptr[n] | numel[n] | elem_size[n].
// kCheck: only flags an index outside its parameter (nothing is written);
// otherwise copies the saved bits back (a revert is a copy: the dtype is its size).
template <bool kCheck>
__global__ void revert_all_kernel(const int64_t* __restrict__ table, int n, int64_t total, int* __restrict__ bad) {
  const int64_t *seg = table, *param = table + n + 1, *index = table + 2 * n + 1, *orig = table + 3 * n + 1,
                *numel = table + 4 * n + 1, *size = table + 5 * n + 1;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = find_segment(seg, n, t);
    const int64_t j = t - seg[i], local = reinterpret_cast<const int64_t*>(index[i])[j];
    if (kCheck) {
      if (local < 0 || local >= numel[i]) *bad = 1;
    } else if (size[i] == 2) {
      copy_back<uint16_t>(param[i], orig[i], local, j);
    } else if (size[i] == 4) {
      copy_back<uint32_t>(param[i], orig[i], local, j);
    } else {
      copy_back<uint64_t>(param[i], orig[i], local, j);
    }
  }
}

unsigned grid_for(int64_t total) {
  return static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 8192));
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
  std::vector<int64_t> table(merged.bounds);
  table.insert(table.end(), merged.key_offsets.begin(), merged.key_offsets.end());
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
  for (const auto* column : {&param_ptr, &orig_ptr, &code}) table.insert(table.end(), column->begin(), column->end());
  const at::Tensor dev_table = device_table(table, params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto acc_zero) {  // the sums' dtype: float, or double if any param is
    using Acc = decltype(acc_zero);
    compose_all_kernel<Acc><<<grid_for(total), 256, 0, stream>>>(
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
  std::vector<int64_t> table(seg);
  for (const auto* column : {&param_ptr, &index_ptr, &orig_ptr, &numel, &size}) {
    table.insert(table.end(), column->begin(), column->end());
  }
  const at::Tensor dev_table = device_table(table, params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // A bad handle must not write: the range check of every list (one host read) first.
  at::Tensor bad = at::zeros({1}, params[0].options().dtype(at::kInt));
  revert_all_kernel<true><<<grid_for(total), 256, 0, stream>>>(dev_table.const_data_ptr<int64_t>(),
                                                               static_cast<int>(n), total, bad.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (bad.item<int>() != 0) {
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(indices[i].numel() == 0 || (indices[i].min().item<int64_t>() >= 0 &&
                                              indices[i].max().item<int64_t>() < params[i].numel()),
                  "sparse_revert_: indices[", i, "] has values outside [0, ", params[i].numel(), ")");
    }
  }
  revert_all_kernel<false><<<grid_for(total), 256, 0, stream>>>(dev_table.const_data_ptr<int64_t>(),
                                                                static_cast<int>(n), total, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CUDA, m) {
  m.impl("sparse_compose_", &sparse_compose_cuda);
  m.impl("sparse_revert_", &sparse_revert_cuda);
}

}  // namespace peftcore

// Device code of the CUDA sparse compose / revert (sparse_cuda.cu) and the layout of
// the int64 table that describes all parameters of one call to a single kernel
// (pointers, offsets, dtypes): one launch for the whole model, whatever the number
// of parameters (a launch per parameter lost to a plain index_add_ loop on an
// H200). Thread t finds its parameter by binary search in the segment starts.
// No torch headers (Half / BFloat16 are template parameters): tests/emulation runs
// these kernels on the host.
#pragma once

#if !defined(PEFTCORE_CUDA_EMULATION)  // tests/emulation runs these kernels on the host
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <vector>

namespace peftcore::sparse_kernels {

enum ElemCode : int64_t { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

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

// The compose table: seg[n + 1] | key_offset[n + 1] | param_ptr[n] | orig_ptr[n] | elem_code[n].
inline std::vector<int64_t> compose_table(const std::vector<int64_t>& seg, const std::vector<int64_t>& key_offset,
                                          const std::vector<int64_t>& param_ptr,
                                          const std::vector<int64_t>& orig_ptr, const std::vector<int64_t>& code) {
  std::vector<int64_t> table(seg);
  for (const auto* column : {&key_offset, &param_ptr, &orig_ptr, &code}) {
    table.insert(table.end(), column->begin(), column->end());
  }
  return table;
}

// Entry t of the union (key keys[t], summed delta sums[t]) of parameter i: saves the
// parameter's element into its originals and adds the delta (in Acc).
template <typename Acc, typename Half, typename BFloat16>
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
      case kF16: add_saving<Half>(param[i], orig[i], local, j, sums[t]); break;
      default: add_saving<BFloat16>(param[i], orig[i], local, j, sums[t]); break;
    }
  }
}

template <typename Word>
__device__ __forceinline__ void copy_back(int64_t param, int64_t orig, int64_t local, int64_t j) {
  reinterpret_cast<Word*>(param)[local] = reinterpret_cast<const Word*>(orig)[j];
}

// The revert table: seg[n + 1] | param_ptr[n] | index_ptr[n] | orig_ptr[n] | numel[n] | elem_size[n].
inline std::vector<int64_t> revert_table(const std::vector<int64_t>& seg, const std::vector<int64_t>& param_ptr,
                                         const std::vector<int64_t>& index_ptr,
                                         const std::vector<int64_t>& orig_ptr, const std::vector<int64_t>& numel,
                                         const std::vector<int64_t>& size) {
  std::vector<int64_t> table(seg);
  for (const auto* column : {&param_ptr, &index_ptr, &orig_ptr, &numel, &size}) {
    table.insert(table.end(), column->begin(), column->end());
  }
  return table;
}

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

// Blocks of 256 threads for `total` entries (grid-stride beyond 8192 blocks).
inline unsigned grid_for(int64_t total) {
  return static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 8192));
}

}  // namespace peftcore::sparse_kernels

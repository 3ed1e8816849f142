// Device code for the skinny parts of the fused LoRA linear (see lora_compose.h).
// No torch headers: T is float, double, c10::Half or c10::BFloat16 (the latter two
// convert to and from float on the device); accumulation is in float (double for
// double). The mask of a dropout is regenerated per element from its seed words,
// read from device memory so that no host synchronisation is needed.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/philox.h"

namespace peftcore::lora_kernels {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Dropout as the kernels see it: seed == nullptr means no mask.
struct DeviceDropout {
  const int64_t* seed = nullptr;
  uint32_t threshold = 0;
};

__device__ __forceinline__ DropoutMask load_mask(const DeviceDropout& d) {
  DropoutMask m;
  if (d.seed != nullptr) {
    m.key = static_cast<uint64_t>(d.seed[0]);
    m.stream = static_cast<uint64_t>(d.seed[1]);
    m.threshold = d.threshold;
  }
  return m;
}

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- shrink
// out[n, j] = scale * Σ_k m(n, k) x[n, k] a[j, k];  x [N, K], a [R, K], out [N, R].
// A block computes a 32-row x 32-rank tile, staging 32-wide K slices of x (masked
// as they are loaded) and a in shared memory; each thread owns 4 rows of one rank.
constexpr int kShrinkRows = 32, kShrinkRanks = 32, kShrinkK = 32, kShrinkThreads = 256;
constexpr int kShrinkRowsPerThread = kShrinkRows * kShrinkRanks / kShrinkThreads;

template <typename T>
__global__ void __launch_bounds__(kShrinkThreads)
    shrink_kernel(const T* __restrict__ x, const T* __restrict__ a, T* __restrict__ out,
                  int64_t n_rows, int64_t k_dim, int64_t rank, typename Acc<T>::type scale,
                  DeviceDropout drop) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t xs[kShrinkK][kShrinkRows + 1];
  __shared__ acc_t as[kShrinkK][kShrinkRanks + 1];
  const DropoutMask mask = load_mask(drop);
  const bool masked = drop.seed != nullptr;
  const int t = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kShrinkRows;
  const int64_t rank0 = static_cast<int64_t>(blockIdx.y) * kShrinkRanks;
  const int my_rank = t % kShrinkRanks;
  const int my_rows = (t / kShrinkRanks) * kShrinkRowsPerThread;

  acc_t acc[kShrinkRowsPerThread] = {};
  for (int64_t k0 = 0; k0 < k_dim; k0 += kShrinkK) {
    for (int i = t; i < kShrinkRows * kShrinkK; i += kShrinkThreads) {
      const int r = i / kShrinkK, kk = i % kShrinkK;
      const int64_t row = row0 + r, k = k0 + kk;
      acc_t v = 0;
      if (row < n_rows && k < k_dim) {
        const int64_t flat = row * k_dim + k;
        if (!masked || mask.keep(static_cast<uint64_t>(flat))) v = static_cast<acc_t>(x[flat]);
      }
      xs[kk][r] = v;
    }
    for (int i = t; i < kShrinkRanks * kShrinkK; i += kShrinkThreads) {
      const int j = i / kShrinkK, kk = i % kShrinkK;
      const int64_t jr = rank0 + j, k = k0 + kk;
      as[kk][j] = (jr < rank && k < k_dim) ? static_cast<acc_t>(a[jr * k_dim + k]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kShrinkK; ++kk) {
      const acc_t av = as[kk][my_rank];
#pragma unroll
      for (int i = 0; i < kShrinkRowsPerThread; ++i) acc[i] += xs[kk][my_rows + i] * av;
    }
    __syncthreads();
  }
  const int64_t j = rank0 + my_rank;
  if (j >= rank) return;
#pragma unroll
  for (int i = 0; i < kShrinkRowsPerThread; ++i) {
    const int64_t row = row0 + my_rows + i;
    if (row < n_rows) out[row * rank + j] = static_cast<T>(acc[i] * scale);
  }
}

template <typename T>
void launch_shrink(const T* x, const T* a, T* out, int64_t n_rows, int64_t k_dim, int64_t rank,
                   double scale, DeviceDropout drop, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(n_rows, kShrinkRows)),
                  static_cast<unsigned>(ceil_div(rank, kShrinkRanks)));
  shrink_kernel<T><<<grid, kShrinkThreads, 0, stream>>>(
      x, a, out, n_rows, k_dim, rank, static_cast<typename Acc<T>::type>(scale), drop);
}

// ---------------------------------------------------------------- expand-add
// y[n, c] += m(n, c) Σ_j h[n, j] bt[c, j];  y [N, C], h [N, R], bt [C, R].
// A block owns 16 rows x 128 columns of y (one column per thread) and reads and
// writes each element of y exactly once.
constexpr int kExpandRows = 16, kExpandCols = 128, kExpandRanks = 32;

template <typename T>
__global__ void __launch_bounds__(kExpandCols)
    expand_add_kernel(T* __restrict__ y, const T* __restrict__ h, const T* __restrict__ bt,
                      int64_t n_rows, int64_t cols, int64_t rank, DeviceDropout drop) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t hs[kExpandRows][kExpandRanks];
  __shared__ acc_t bs[kExpandCols][kExpandRanks + 1];
  const DropoutMask mask = load_mask(drop);
  const bool masked = drop.seed != nullptr;
  const int t = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kExpandRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kExpandCols;

  acc_t acc[kExpandRows] = {};
  for (int64_t j0 = 0; j0 < rank; j0 += kExpandRanks) {
    for (int i = t; i < kExpandRows * kExpandRanks; i += kExpandCols) {
      const int r = i / kExpandRanks, j = i % kExpandRanks;
      const int64_t row = row0 + r, jr = j0 + j;
      hs[r][j] = (row < n_rows && jr < rank) ? static_cast<acc_t>(h[row * rank + jr]) : acc_t(0);
    }
    for (int i = t; i < kExpandCols * kExpandRanks; i += kExpandCols) {
      const int c = i / kExpandRanks, j = i % kExpandRanks;
      const int64_t col = col0 + c, jr = j0 + j;
      bs[c][j] = (col < cols && jr < rank) ? static_cast<acc_t>(bt[col * rank + jr]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int j = 0; j < kExpandRanks; ++j) {
      const acc_t bv = bs[t][j];
#pragma unroll
      for (int r = 0; r < kExpandRows; ++r) acc[r] += hs[r][j] * bv;
    }
    __syncthreads();
  }
  const int64_t col = col0 + t;
  if (col >= cols) return;
#pragma unroll
  for (int r = 0; r < kExpandRows; ++r) {
    const int64_t row = row0 + r;
    if (row >= n_rows) break;
    const int64_t flat = row * cols + col;
    if (masked && !mask.keep(static_cast<uint64_t>(flat))) continue;
    y[flat] = static_cast<T>(static_cast<acc_t>(y[flat]) + acc[r]);
  }
}

template <typename T>
void launch_expand_add(T* y, const T* h, const T* bt, int64_t n_rows, int64_t cols, int64_t rank,
                       DeviceDropout drop, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(n_rows, kExpandRows)),
                  static_cast<unsigned>(ceil_div(cols, kExpandCols)));
  expand_add_kernel<T><<<grid, kExpandCols, 0, stream>>>(y, h, bt, n_rows, cols, rank, drop);
}

// ---------------------------------------------------------------- reduce
// out[j, c] = Σ_n l[n, j] m(n, c) r[n, c];  l [N, R], r [N, C], out [R, C].
// The sum over the long N axis is split across blockIdx.z; each split writes its
// partial tile to a workspace [splits, R, C] in the accumulation type, and a
// second kernel adds the splits in a fixed order, so results are deterministic.
constexpr int kReduceCols = 128, kReduceRanks = 32, kReduceRowBatch = 16;

template <typename T>
__global__ void __launch_bounds__(kReduceCols)
    reduce_partial_kernel(const T* __restrict__ l, const T* __restrict__ r,
                          typename Acc<T>::type* __restrict__ partial, int64_t n_rows,
                          int64_t cols, int64_t rank, int64_t rows_per_split, DeviceDropout drop) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t ls[kReduceRowBatch][kReduceRanks];
  const DropoutMask mask = load_mask(drop);
  const bool masked = drop.seed != nullptr;
  const int t = threadIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kReduceCols + t;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kReduceRanks;
  const int64_t split = blockIdx.z;
  const int64_t row_begin = split * rows_per_split;
  const int64_t row_end = std::min(n_rows, row_begin + rows_per_split);

  acc_t acc[kReduceRanks] = {};
  for (int64_t rb = row_begin; rb < row_end; rb += kReduceRowBatch) {
    for (int i = t; i < kReduceRowBatch * kReduceRanks; i += kReduceCols) {
      const int rr = i / kReduceRanks, j = i % kReduceRanks;
      const int64_t row = rb + rr, jr = j0 + j;
      ls[rr][j] = (row < row_end && jr < rank) ? static_cast<acc_t>(l[row * rank + jr]) : acc_t(0);
    }
    __syncthreads();
    if (col < cols) {
      const int batch = static_cast<int>(std::min<int64_t>(kReduceRowBatch, row_end - rb));
      for (int rr = 0; rr < batch; ++rr) {
        const int64_t flat = (rb + rr) * cols + col;
        acc_t v = static_cast<acc_t>(r[flat]);
        if (masked && !mask.keep(static_cast<uint64_t>(flat))) v = 0;
#pragma unroll
        for (int j = 0; j < kReduceRanks; ++j) acc[j] += ls[rr][j] * v;
      }
    }
    __syncthreads();
  }
  if (col >= cols) return;
#pragma unroll
  for (int j = 0; j < kReduceRanks; ++j) {
    if (j0 + j < rank) partial[(split * rank + j0 + j) * cols + col] = acc[j];
  }
}

template <typename T>
__global__ void reduce_finalize_kernel(const typename Acc<T>::type* __restrict__ partial,
                                       T* __restrict__ out, int64_t splits, int64_t count) {
  using acc_t = typename Acc<T>::type;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  acc_t sum = 0;
  for (int64_t s = 0; s < splits; ++s) sum += partial[s * count + i];
  out[i] = static_cast<T>(sum);
}

// How many splits of the N axis keep every SM busy (about 4 blocks per SM).
inline int64_t reduce_splits(int64_t n_rows, int64_t cols, int64_t rank, int num_sms) {
  const int64_t tiles = ceil_div(cols, kReduceCols) * ceil_div(rank, kReduceRanks);
  const int64_t wanted = ceil_div(4 * static_cast<int64_t>(num_sms), tiles);
  const int64_t most = std::max<int64_t>(1, ceil_div(n_rows, 4 * kReduceRowBatch));
  return std::clamp<int64_t>(wanted, 1, std::min<int64_t>(most, 1024));
}

template <typename T>
void launch_reduce(const T* l, const T* r, typename Acc<T>::type* workspace, T* out,
                   int64_t n_rows, int64_t cols, int64_t rank, int64_t splits, DeviceDropout drop,
                   cudaStream_t stream) {
  const int64_t rows_per_split = ceil_div(n_rows, splits);
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kReduceCols)),
                  static_cast<unsigned>(ceil_div(rank, kReduceRanks)),
                  static_cast<unsigned>(splits));
  reduce_partial_kernel<T><<<grid, kReduceCols, 0, stream>>>(l, r, workspace, n_rows, cols, rank,
                                                             rows_per_split, drop);
  const int64_t count = rank * cols;
  reduce_finalize_kernel<T><<<static_cast<unsigned>(ceil_div(count, 256)), 256, 0, stream>>>(
      workspace, out, splits, count);
}

}  // namespace peftcore::lora_kernels

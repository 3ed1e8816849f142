// Tensor-core kernels (WMMA, sm_80+) for the skinny products of the LoRA linear in
// 16-bit, with the dropout mask applied while x streams through:
//
//   shrink   out [N, r] = s (m∘x) W^T      x [N, K] (row stride ldx), W [r, K] contiguous
//   outer    acc [r, C] = L^T (m∘R)        L [N, r] contiguous, R [N, C] (row stride ldr)
//   expand   out [N, K] (+)= m∘(T A)       T [N, r], A [r, K] contiguous, out contiguous
//
// shrink and outer stream their big operand once in 16-byte vectors (8 elements: one Philox
// group of the mask, zeroed with bit operations) through shared memory, with the
// next tile's loads in flight during the current tile's MMAs. The reduction
// dimension is split over blocks (K for shrink, N for outer) so that a few thousand
// rows still fill the GPU; each split writes float32 partials and
// sum_partials_kernel adds them in a fixed order (deterministic) and rounds once.
// expand computes its output tile from two small tiles and writes it once.
// Without these kernels (switch off, other dtypes or layouts) the skinny products
// are cuBLAS GEMMs and dropout takes a masked copy of x (lora_cuda.cu).
// Preconditions (checked by the launcher): K, C, ldx, ldr multiples of 8, the big
// operand (expand: out) 16-byte aligned, r <= kMaxRank.
#pragma once

#if !defined(PEFTCORE_CUDA_EMULATION)  // tests/emulation runs these kernels on the host
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif

#include <cstdint>

#include "lora/lora_kernels.cuh"

namespace peftcore::skinny_tc {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kMaxRank = 64;
constexpr int kPad = 8;  // shared rows padded by 16 bytes (bank spread; WMMA wants ldm % 8 == 0)

// shrink: 128 rows (16 per warp) x 64 of K per tile
constexpr int kShrinkRows = 16 * kWarps;
constexpr int kShrinkK = 64;
constexpr int kShrinkLd = kShrinkK + kPad;
constexpr int kShrinkVecs = kShrinkRows * kShrinkK / 8 / kThreads;  // x vectors per thread
constexpr int kShrinkWVecs = kMaxRank * kShrinkK / 8 / kThreads;    // W vectors per thread

// outer: 64 rows of N x 128 columns (16 per warp) per tile
constexpr int kOuterRows = 64;
constexpr int kOuterCols = 16 * kWarps;
constexpr int kOuterLd = kOuterCols + kPad;
constexpr int kOuterLLd = kMaxRank + kPad;
constexpr int kOuterVecs = kOuterRows * kOuterCols / 8 / kThreads;
constexpr int kOuterLElems = kOuterRows * kMaxRank / kThreads;  // L elements per thread at most

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half(v);
}

// The keep bits of the 8 elements from flat index i0 (a multiple of 8) on.
__device__ __forceinline__ uint32_t keep_bits8(const DropoutMask& mask, int64_t i0) {
  static_assert(kMaskGroup == 8, "one Philox group per 16-byte vector");
  return mask.keep_bits(static_cast<uint64_t>(i0) / kMaskGroup);
}

// Zeroes the 16-bit elements of v whose keep bit is clear (element k: bit k; two
// elements per 32-bit word, the lower-addressed one in the low half).
__device__ __forceinline__ uint4 mask_vec8(uint4 v, uint32_t bits) {
  const auto word_mask = [bits](int w) -> uint32_t {
    return (((bits >> (2 * w)) & 1u) ? 0x0000FFFFu : 0u) | (((bits >> (2 * w + 1)) & 1u) ? 0xFFFF0000u : 0u);
  };
  v.x &= word_mask(0);
  v.y &= word_mask(1);
  v.z &= word_mask(2);
  v.w &= word_mask(3);
  return v;
}

__device__ __forceinline__ uint4 load_vec8(const void* p) { return *reinterpret_cast<const uint4*>(p); }

// A tile of 16-bit rows in 16-byte vectors, kPerRow vectors per tile row, kVecs per
// thread (vector v = threadIdx.x + j kThreads: tile row v / kPerRow, columns 8 (v %
// kPerRow) on): load_tile fetches the in-bounds ones (zero elsewhere) into registers,
// store_tile writes them to shared memory, zeroing dropped elements when `masked`
// (flat index row * mask_cols + col of the contiguous operand).
template <int kVecs, int kPerRow, typename T>
__device__ __forceinline__ void load_tile(uint4 (&regs)[kVecs], const T* src, int64_t ld, int64_t row0, int64_t col0,
                                          int64_t row_end, int64_t col_end) {
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int v = threadIdx.x + j * kThreads;
    const int64_t row = row0 + v / kPerRow, col = col0 + (v % kPerRow) * 8;
    regs[j] = row < row_end && col < col_end ? load_vec8(src + row * ld + col) : make_uint4(0u, 0u, 0u, 0u);
  }
}

template <int kVecs, int kPerRow, typename T>
__device__ __forceinline__ void store_tile(const uint4 (&regs)[kVecs], T* tile, int tile_ld, bool masked,
                                           DropoutMask mask, int64_t row0, int64_t col0, int64_t row_end,
                                           int64_t col_end, int64_t mask_cols) {
#pragma unroll
  for (int j = 0; j < kVecs; ++j) {
    const int v = threadIdx.x + j * kThreads;
    const int r = v / kPerRow, c = (v % kPerRow) * 8;
    uint4 val = regs[j];
    const int64_t row = row0 + r, col = col0 + c;
    if (masked && row < row_end && col < col_end) val = mask_vec8(val, keep_bits8(mask, row * mask_cols + col));
    *reinterpret_cast<uint4*>(tile + r * tile_ld + c) = val;
  }
}

// The first `padded` columns of rows [row0, row0 + kRows) of a contiguous [*, cols]
// operand of few columns (cols <= padded <= kMaxRank), element by element, zero past
// row_end or cols: kElems elements per thread at most.
template <int kRows, int kElems, typename T>
__device__ __forceinline__ void load_narrow_tile(T (&regs)[kElems], const T* src, int cols, int padded, int64_t row0,
                                                 int64_t row_end) {
#pragma unroll
  for (int j = 0; j < kElems; ++j) {
    const int e = threadIdx.x + j * kThreads;
    if (e < kRows * padded) {
      const int64_t row = row0 + e / padded;
      const int c = e % padded;
      regs[j] = row < row_end && c < cols ? src[row * cols + c] : from_float<T>(0.0f);
    }
  }
}

template <int kRows, int kElems, typename T>
__device__ __forceinline__ void store_narrow_tile(const T (&regs)[kElems], T* tile, int tile_ld, int padded) {
#pragma unroll
  for (int j = 0; j < kElems; ++j) {
    const int e = threadIdx.x + j * kThreads;
    if (e < kRows * padded) tile[(e / padded) * tile_ld + e % padded] = regs[j];
  }
}

__device__ __forceinline__ DropoutMask mask_of(const lora_kernels::DeviceDropout& drop) {
  return drop.seed != nullptr ? lora_kernels::load_mask(drop) : DropoutMask{};
}

// Streams tiles begin, begin + step, ... < end through shared memory: load(i) issues
// tile i's global loads into registers, store(i) puts them in shared memory, compute()
// runs the MMAs on it while the next tile's loads are in flight.
template <typename Load, typename Store, typename Compute>
__device__ __forceinline__ void pipelined_tiles(int64_t begin, int64_t end, int step, const Load& load,
                                                const Store& store, const Compute& compute) {
  if (begin < end) load(begin);
  for (int64_t i = begin; i < end; i += step) {
    __syncthreads();  // the previous tile's MMAs are done with shared memory
    store(i);
    __syncthreads();
    if (i + step < end) load(i + step);
    compute();
  }
}

// Grid (ceil(rows / 128), splits): block (i, s) reduces columns [s k_per_split, ...) of
// rows [128 i, 128 i + 128) into partial [s][padded_rows][padded_rank], float32.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    shrink_kernel(const T* __restrict__ x, int64_t ldx, int64_t rows, int64_t cols, const T* __restrict__ w,
                  int rank, int64_t k_per_split, float* __restrict__ partial, int64_t padded_rows,
                  lora_kernels::DeviceDropout drop) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(128) T xs[kShrinkRows * kShrinkLd];
  __shared__ __align__(128) T ws[kMaxRank * kShrinkLd];
  const int warp = threadIdx.x / 32;
  const int rank_tiles = (rank + 15) / 16;
  const int padded_rank = 16 * rank_tiles;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kShrinkRows;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * k_per_split;
  const int64_t k_end = k_begin + k_per_split < cols ? k_begin + k_per_split : cols;
  const bool masked = drop.seed != nullptr;
  const DropoutMask mask = mask_of(drop);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kMaxRank / 16];
  for (auto& frag : acc) wmma::fill_fragment(frag, 0.0f);

  constexpr int kPerRow = kShrinkK / 8;
  uint4 xv[kShrinkVecs], wv[kShrinkWVecs];
  const auto load = [&](int64_t k0) {
    load_tile<kShrinkVecs, kPerRow>(xv, x, ldx, row0, k0, rows, k_end);
    load_tile<kShrinkWVecs, kPerRow>(wv, w, cols, 0, k0, rank, k_end);  // rows past r: zero
  };
  const auto store = [&](int64_t k0) {
    store_tile<kShrinkVecs, kPerRow>(xv, xs, kShrinkLd, masked, mask, row0, k0, rows, k_end, cols);
    store_tile<kShrinkWVecs, kPerRow>(wv, ws, kShrinkLd, false, mask, 0, k0, rank, k_end, cols);
  };
  pipelined_tiles(k_begin, k_end, kShrinkK, load, store, [&] {
#pragma unroll
    for (int kk = 0; kk < kShrinkK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, xs + warp * 16 * kShrinkLd + kk, kShrinkLd);
#pragma unroll
      for (int t = 0; t < kMaxRank / 16; ++t) {
        if (t < rank_tiles) {
          // W^T [K, r] is W [r, K] read column-major.
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
          wmma::load_matrix_sync(b, ws + t * 16 * kShrinkLd + kk, kShrinkLd);
          wmma::mma_sync(acc[t], a, b, acc[t]);
        }
      }
    }
  });
  // partial [split][padded_rows][padded_rank], float32
  float* out = partial + (static_cast<int64_t>(blockIdx.y) * padded_rows + row0 + warp * 16) * padded_rank;
#pragma unroll
  for (int t = 0; t < kMaxRank / 16; ++t) {
    if (t < rank_tiles) wmma::store_matrix_sync(out + t * 16, acc[t], padded_rank, wmma::mem_row_major);
  }
#endif
}

// Grid (ceil(C / 128), slabs): block (i, s) adds rows [s * rows_per_slab, ...) into
// partial [s][padded_rank][padded_cols], float32.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    outer_kernel(const T* __restrict__ l, int rank, const T* __restrict__ rmat, int64_t ldr, int64_t rows,
                 int64_t cols, int64_t rows_per_slab, float* __restrict__ partial, int64_t padded_cols,
                 lora_kernels::DeviceDropout drop) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(128) T rs[kOuterRows * kOuterLd];
  __shared__ __align__(128) T ls[kOuterRows * kOuterLLd];
  const int warp = threadIdx.x / 32;
  const int rank_tiles = (rank + 15) / 16;
  const int padded_rank = 16 * rank_tiles;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kOuterCols;
  const int64_t n_begin = static_cast<int64_t>(blockIdx.y) * rows_per_slab;
  const int64_t n_end = n_begin + rows_per_slab < rows ? n_begin + rows_per_slab : rows;
  const bool masked = drop.seed != nullptr;
  const DropoutMask mask = mask_of(drop);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kMaxRank / 16];
  for (auto& frag : acc) wmma::fill_fragment(frag, 0.0f);

  constexpr int kPerRow = kOuterCols / 8;
  uint4 rv[kOuterVecs];
  T lv[kOuterLElems];
  const auto load = [&](int64_t n0) {
    load_tile<kOuterVecs, kPerRow>(rv, rmat, ldr, n0, col0, n_end, cols);
    load_narrow_tile<kOuterRows>(lv, l, rank, padded_rank, n0, n_end);
  };
  const auto store = [&](int64_t n0) {
    store_tile<kOuterVecs, kPerRow>(rv, rs, kOuterLd, masked, mask, n0, col0, n_end, cols, cols);
    store_narrow_tile<kOuterRows>(lv, ls, kOuterLLd, padded_rank);
  };
  pipelined_tiles(n_begin, n_end, kOuterRows, load, store, [&] {
#pragma unroll
    for (int kk = 0; kk < kOuterRows; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
      wmma::load_matrix_sync(b, rs + kk * kOuterLd + warp * 16, kOuterLd);
#pragma unroll
      for (int t = 0; t < kMaxRank / 16; ++t) {
        if (t < rank_tiles) {
          // L^T [r, rows] is the L tile [rows, r] read column-major.
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> a;
          wmma::load_matrix_sync(a, ls + kk * kOuterLLd + t * 16, kOuterLLd);
          wmma::mma_sync(acc[t], a, b, acc[t]);
        }
      }
    }
  });
  float* out = partial + static_cast<int64_t>(blockIdx.y) * padded_rank * padded_cols + col0 + warp * 16;
#pragma unroll
  for (int t = 0; t < kMaxRank / 16; ++t) {
    if (t < rank_tiles) {
      wmma::store_matrix_sync(out + t * 16 * padded_cols, acc[t], padded_cols, wmma::mem_row_major);
    }
  }
#endif
}

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}

template <typename T>
struct alignas(16) Pack8 {
  T v[8];
};

// expand: 64 rows x 128 columns of out per block; warp w covers rows 16 (w / 2) and
// columns 64 (w % 2), four 16 x 16 tiles. The product is written once, masked, in
// 16-byte vectors, so dx's term needs no separate zeroing pass.
constexpr int kExpandRows = 64;
constexpr int kExpandCols = 128;
constexpr int kExpandTLd = kMaxRank + kPad;
constexpr int kExpandALd = kExpandCols + kPad;
constexpr int kExpandTElems = kExpandRows * kMaxRank / kThreads;      // T elements per thread at most
constexpr int kExpandAVecs = kMaxRank * kExpandCols / 8 / kThreads;  // A vectors per thread at most

// Grid (ceil(N / 64), ceil(K / 128)). accumulate: out += m∘(T A), else out = m∘(T A).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    expand_kernel(const T* __restrict__ t, int rank, const T* __restrict__ a, int64_t rows, int64_t cols,
                  T* __restrict__ out, bool accumulate, lora_kernels::DeviceDropout drop) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(128) T t_tile[kExpandRows * kExpandTLd];
  __shared__ __align__(128) T a_tile[kMaxRank * kExpandALd];
  __shared__ __align__(128) float stage[kWarps * 16 * 16];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rank_tiles = (rank + 15) / 16;
  const int padded_rank = 16 * rank_tiles;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kExpandRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kExpandCols;
  const bool masked = drop.seed != nullptr;
  const DropoutMask mask = mask_of(drop);

  // T tile [64, padded_rank] and A tile [kMaxRank, 128], zero outside the operands.
  {
    T tv[kExpandTElems];
    uint4 av[kExpandAVecs];
    load_narrow_tile<kExpandRows>(tv, t, rank, padded_rank, row0, rows);
    load_tile<kExpandAVecs, kExpandCols / 8>(av, a, cols, 0, col0, rank, cols);
    store_narrow_tile<kExpandRows>(tv, t_tile, kExpandTLd, padded_rank);
    store_tile<kExpandAVecs, kExpandCols / 8>(av, a_tile, kExpandALd, false, mask, 0, col0, rank, cols, cols);
  }
  __syncthreads();

  const int warp_row = warp / 2, warp_col = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4];
  for (auto& frag : acc) wmma::fill_fragment(frag, 0.0f);
#pragma unroll
  for (int kk = 0; kk < kMaxRank; kk += 16) {
    if (kk < padded_rank) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, t_tile + warp_row * 16 * kExpandTLd + kk, kExpandTLd);
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, a_tile + kk * kExpandALd + warp_col * 64 + f * 16, kExpandALd);
        wmma::mma_sync(acc[f], fa, fb, acc[f]);
      }
    }
  }

  float* my_stage = stage + warp * 256;
  const int r = lane / 2, c8 = (lane % 2) * 8;
  const int64_t row = row0 + warp_row * 16 + r;
#pragma unroll
  for (int f = 0; f < 4; ++f) {
    wmma::store_matrix_sync(my_stage, acc[f], 16, wmma::mem_row_major);
    __syncwarp();
    const int64_t col = col0 + warp_col * 64 + f * 16 + c8;
    if (row < rows && col < cols) {
      const int64_t i0 = row * cols + col;
      const uint32_t bits = masked ? keep_bits8(mask, i0) : 0xFFu;
      Pack8<T> old{};
      if (accumulate) old = *reinterpret_cast<const Pack8<T>*>(out + i0);
      Pack8<T> val;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float term = ((bits >> e) & 1u) ? my_stage[r * 16 + c8 + e] : 0.0f;
        val.v[e] = from_float<T>(accumulate ? to_float(old.v[e]) + term : term);
      }
      *reinterpret_cast<Pack8<T>*>(out + i0) = val;
    }
    __syncwarp();
  }
#endif
}

// out[i * out_row_stride + j * out_col_stride] = scale * Σ_s partial[s * split_stride + i * ld + j]
// for i < rows, j < cols, the splits added in order.
template <typename T>
__global__ void sum_partials_kernel(const float* __restrict__ partial, int64_t splits, int64_t split_stride,
                                    int64_t ld, int64_t rows, int64_t cols, float scale, T* __restrict__ out,
                                    int64_t out_row_stride, int64_t out_col_stride) {
  const int64_t n = rows * cols;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / cols, j = idx % cols;
    float s = 0.0f;
    for (int64_t k = 0; k < splits; ++k) s += partial[k * split_stride + i * ld + j];
    out[i * out_row_stride + j * out_col_stride] = from_float<T>(scale * s);
  }
}

}  // namespace peftcore::skinny_tc

// Device code of the multi-tensor optimizer steps (no torch headers).
//
// Multi-tensor apply, apex-style: tensors are cut into chunks of kChunk elements;
// one block handles one chunk, and the (tensor, chunk) of every block travels in
// the kernel's parameters (ListMeta), so a launch needs no host-to-device copy
// and can be captured in a CUDA graph. Per-chunk partial norms go to a buffer
// indexed by a global chunk number; chunk_totals_kernel adds them per tensor in
// chunk order, so norms are deterministic. Scalars that change every step (lr,
// step, the gradient divisor, found_inf) are read from device memory.
#pragma once

#if !defined(PEFTCORE_CUDA_EMULATION)  // tests/emulation runs these kernels on the host
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <type_traits>

#include "optim/optim_math.h"

namespace peftcore::optim_kernels {

constexpr int kChunk = 65536;
constexpr int kThreads = 512;
constexpr int kMaxTensors = 32;
constexpr int kMaxBlocks = 256;
constexpr int kTotalsBatch = 256;

template <int Depth>
struct ListMeta {
  void* ptr[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t global_tensor[kMaxTensors];
  uint8_t flag[kMaxTensors];  // per-tensor bit (LARS: fresh momentum buffer)
  uint8_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
  int32_t block_global_chunk[kMaxBlocks];
};

struct TotalsMeta {
  int32_t first_chunk[kTotalsBatch];
  int32_t n_chunks[kTotalsBatch];
  int32_t count;
  int32_t tensor_base;
};

using optim::LambHyper;

struct LarsHyper {
  double momentum, dampening, weight_decay, trust_coeff, eps;
  bool nesterov, trust_clip, adapt, use_momentum;
};

// Sum over the block; the result is valid in thread 0. `scratch` holds 32 values.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? scratch[lane] : T(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sums a and b over the block and stores them as this chunk's two partials
// (rows 0 and 1 of `partial`, indexed by the global chunk number).
template <typename C, int Depth>
__device__ void store_partial_pair(C a, C b, C* scratch, const ListMeta<Depth>& meta, double* partial,
                                   int64_t total_chunks) {
  a = block_sum(a, scratch);
  b = block_sum(b, scratch);
  if (threadIdx.x == 0) {
    const int32_t chunk = meta.block_global_chunk[blockIdx.x];
    partial[chunk] = a;
    partial[total_chunks + chunk] = b;
  }
}

__device__ __forceinline__ bool skipped(const float* found_inf) {
  return found_inf != nullptr && *found_inf != 0.f;
}

// The element range of this block's chunk.
template <int Depth>
__device__ __forceinline__ void block_range(const ListMeta<Depth>& meta, int& t, int64_t& begin,
                                            int64_t& end) {
  t = meta.block_tensor[blockIdx.x];
  begin = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * kChunk;
  end = begin + kChunk < meta.numel[t] ? begin + kChunk : meta.numel[t];
}

// Visits this thread's elements of [begin, end) in the order of the plain
// block-stride loop (so per-thread sums are bit-identical to it), kIlp at a time:
// load(k, i) for all kIlp elements first, then use(k, i). Each thread then keeps
// kIlp independent loads in flight; with one at a time a large LAMB/LARS step stayed
// far from the copy bandwidth on an H200 (bench/results/NVIDIA-H200/optim.md has the
// step's bandwidth as it is). For fixed k the warp's loads
// stay coalesced, and no alignment is assumed.
constexpr int kIlp = 4;

template <typename Load, typename Use>
__device__ __forceinline__ void ilp_loop(int64_t begin, int64_t end, const Load& load, const Use& use) {
  const int64_t stride = blockDim.x;
  for (int64_t base = begin + threadIdx.x; base < end; base += stride * kIlp) {
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      const int64_t i = base + k * stride;
      if (i < end) load(k, i);
    }
#pragma unroll
    for (int k = 0; k < kIlp; ++k) {
      const int64_t i = base + k * stride;
      if (i < end) use(k, i);
    }
  }
}

// ---------------------------------------------------------------- sums of squares
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sumsq_kernel(ListMeta<1> meta, double* partial, int64_t total_chunks) {
  using C = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  __shared__ C scratch[32];
  int t;
  int64_t begin, end;
  block_range(meta, t, begin, end);
  const T* x = static_cast<const T*>(meta.ptr[0][t]);
  C acc = 0, xv[kIlp];
  ilp_loop(begin, end, [&](int k, int64_t i) { xv[k] = static_cast<C>(x[i]); },
           [&](int k, int64_t) { acc += xv[k] * xv[k]; });
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[meta.block_global_chunk[blockIdx.x]] = acc;
}

// totals[r][tensor] = Σ_chunks partial[r][chunk], for `rows` rows of partials. Static:
// every optimizer .cu launches it, and a non-template kernel in a header would be
// defined once per file.
static __global__ void chunk_totals_kernel(const double* partial, int64_t total_chunks, double* totals,
                                    int64_t n_tensors, int rows, TotalsMeta meta) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= meta.count) return;
  for (int r = 0; r < rows; ++r) {
    double s = 0.0;
    for (int k = 0; k < meta.n_chunks[i]; ++k) s += partial[r * total_chunks + meta.first_chunk[i] + k];
    totals[r * n_tensors + meta.tensor_base + i] = s;
  }
}

// ---------------------------------------------------------------- LAMB
// Pass 1 (p, g, m, v): moments; partial[0] = ||p||^2, partial[1] = ||u||^2 per chunk.
template <typename P, typename G, typename C>
__global__ void __launch_bounds__(kThreads)
    lamb_moments_kernel(ListMeta<4> meta, double* partial, int64_t total_chunks, const float* step,
                        const float* divisor, const float* found_inf, LambHyper h) {
  __shared__ C scratch[32];
  if (skipped(found_inf)) return;
  int t;
  int64_t begin, end;
  block_range(meta, t, begin, end);
  const P* p = static_cast<const P*>(meta.ptr[0][t]);
  const G* g = static_cast<const G*>(meta.ptr[1][t]);
  C* m = static_cast<C*>(meta.ptr[2][t]);
  C* v = static_cast<C*>(meta.ptr[3][t]);
  const auto s = optim::lamb_scalars<C>(h, static_cast<double>(*step));
  const C div = static_cast<C>(*divisor);
  C psq = 0, usq = 0, pv[kIlp], gv[kIlp], mv[kIlp], vv[kIlp];
  ilp_loop(
      begin, end,
      [&](int k, int64_t i) {
        pv[k] = static_cast<C>(p[i]);
        gv[k] = static_cast<C>(g[i]);
        mv[k] = m[i];
        vv[k] = v[i];
      },
      [&](int k, int64_t i) {
        const C u = optim::lamb_moments(gv[k] / div, pv[k], mv[k], vv[k], s);
        m[i] = mv[k];
        v[i] = vv[k];
        psq += pv[k] * pv[k];
        usq += u * u;
      });
  store_partial_pair(psq, usq, scratch, meta, partial, total_chunks);
}

// Pass 2 (p, m, v): p -= lr * ratio * u with the per-tensor norms of pass 1.
template <typename P, typename C>
__global__ void __launch_bounds__(kThreads)
    lamb_apply_kernel(ListMeta<3> meta, const double* totals, int64_t n_tensors, const float* lr,
                      const float* step, const float* found_inf, LambHyper h) {
  if (skipped(found_inf)) return;
  int t;
  int64_t begin, end;
  block_range(meta, t, begin, end);
  P* p = static_cast<P*>(meta.ptr[0][t]);
  const C* m = static_cast<const C*>(meta.ptr[1][t]);
  const C* v = static_cast<const C*>(meta.ptr[2][t]);
  const auto s = optim::lamb_scalars<C>(h, static_cast<double>(*step));
  const int gt = meta.global_tensor[t];
  const C ratio = h.adapt ? optim::lamb_trust_ratio<C>(
                                static_cast<C>(sqrt(totals[gt])), static_cast<C>(sqrt(totals[n_tensors + gt])),
                                static_cast<C>(h.phi_min), static_cast<C>(h.phi_max), h.trust_clip,
                                static_cast<C>(h.min_trust))
                          : C(1);
  const C neg_lr = -static_cast<C>(*lr);
  C pv[kIlp], mv[kIlp], vv[kIlp];
  ilp_loop(
      begin, end,
      [&](int k, int64_t i) {
        pv[k] = static_cast<C>(p[i]);
        mv[k] = m[i];
        vv[k] = v[i];
      },
      [&](int k, int64_t i) {
        const C u = optim::lamb_update(pv[k], mv[k], vv[k], s) * ratio;
        p[i] = static_cast<P>(pv[k] + neg_lr * u);
      });
}

// ---------------------------------------------------------------- LARS
// Norms (p, g): partial[0] = ||p||^2, partial[1] = ||g / divisor||^2 per chunk.
template <typename P, typename G, typename C>
__global__ void __launch_bounds__(kThreads)
    lars_norms_kernel(ListMeta<2> meta, double* partial, int64_t total_chunks, const float* divisor,
                      const float* found_inf) {
  __shared__ C scratch[32];
  if (skipped(found_inf)) return;
  int t;
  int64_t begin, end;
  block_range(meta, t, begin, end);
  const P* p = static_cast<const P*>(meta.ptr[0][t]);
  const G* g = static_cast<const G*>(meta.ptr[1][t]);
  const C div = static_cast<C>(*divisor);
  C psq = 0, gsq = 0, pv[kIlp], gv[kIlp];
  ilp_loop(
      begin, end,
      [&](int k, int64_t i) {
        pv[k] = static_cast<C>(p[i]);
        gv[k] = static_cast<C>(g[i]);
      },
      [&](int k, int64_t) {
        const C gi = gv[k] / div;
        psq += pv[k] * pv[k];
        gsq += gi * gi;
      });
  store_partial_pair(psq, gsq, scratch, meta, partial, total_chunks);
}

// Update (p, g, buf): trust ratio, momentum, p -= lr * d. meta.flag marks fresh buffers.
template <typename P, typename G, typename C>
__global__ void __launch_bounds__(kThreads)
    lars_update_kernel(ListMeta<3> meta, const double* totals, int64_t n_tensors, const float* lr,
                       const float* divisor, const float* found_inf, LarsHyper h) {
  if (skipped(found_inf)) return;
  int t;
  int64_t begin, end;
  block_range(meta, t, begin, end);
  P* p = static_cast<P*>(meta.ptr[0][t]);
  const G* g = static_cast<const G*>(meta.ptr[1][t]);
  C* buf = static_cast<C*>(meta.ptr[2][t]);
  const int gt = meta.global_tensor[t];
  const C lr_v = static_cast<C>(*lr), div = static_cast<C>(*divisor);
  const C ratio = h.adapt ? optim::lars_trust_ratio<C>(
                                static_cast<C>(sqrt(totals[gt])), static_cast<C>(sqrt(totals[n_tensors + gt])),
                                static_cast<C>(h.trust_coeff), static_cast<C>(h.weight_decay),
                                static_cast<C>(h.eps), h.trust_clip, lr_v)
                          : C(1);
  const C wd = static_cast<C>(h.weight_decay), mom = static_cast<C>(h.momentum);
  const C damp = static_cast<C>(1.0 - h.dampening);
  const bool first = meta.flag[t] != 0;
  const bool read_buf = h.use_momentum && !first;
  C pv[kIlp], gv[kIlp], bv[kIlp];
  ilp_loop(
      begin, end,
      [&](int k, int64_t i) {
        pv[k] = static_cast<C>(p[i]);
        gv[k] = static_cast<C>(g[i]);
        bv[k] = read_buf ? buf[i] : C(0);
      },
      [&](int k, int64_t i) {
        C d = gv[k] / div;
        if (h.adapt) d = (d + wd * pv[k]) * ratio;
        if (h.use_momentum) {
          const C b = first ? d : bv[k] * mom + damp * d;
          buf[i] = b;
          d = h.nesterov ? d + mom * b : b;
        }
        p[i] = static_cast<P>(pv[k] - lr_v * d);
      });
}

}  // namespace peftcore::optim_kernels

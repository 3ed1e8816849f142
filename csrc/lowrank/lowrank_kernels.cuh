// Device code for the dropout parts of the low-rank engine (lowrank.h): the
// keep-mask is regenerated from its seed words (read from device memory, so no host
// synchronisation) and applied while a tensor streams through once. Every product,
// skinny or not, is a cuBLAS GEMM (lowrank_cuda.cu): the kernels here do what cuBLAS
// does not (the mask).
//
// Each thread takes units of 8 consecutive elements (one Philox group) and, when the
// pointers allow, moves them as one aligned pack (16 bytes for 16-bit types): an
// element-by-element pass reached only a fraction of the copy bandwidth, and LoRA's
// three masked passes per step are memory-bound.
// No torch headers: T is float, double, c10::Half or c10::BFloat16.
#pragma once

#if !defined(PEFTCORE_CUDA_EMULATION)  // tests/emulation runs these kernels on the host
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>

#include "common/philox.h"

namespace peftcore::lowrank_kernels {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Dropout as the kernels see it.
struct DeviceDropout {
  const int64_t* seed = nullptr;
  uint32_t threshold = 0;
};

__device__ __forceinline__ DropoutMask load_mask(const DeviceDropout& d) {
  DropoutMask m;
  m.key = static_cast<uint64_t>(d.seed[0]);
  m.stream = static_cast<uint64_t>(d.seed[1]);
  m.threshold = d.threshold;
  return m;
}

constexpr int kMaskThreads = 256;

// Calls body(i, kept) for every flat index i of a contiguous [N, K] tensor, grid-
// stride; one Philox call gives the bits of kMaskGroup consecutive elements (one
// group per thread per iteration).
template <typename Body>
__device__ __forceinline__ void for_each_with_mask(int64_t numel, const DropoutMask& mask, Body body) {
  const int64_t groups = (numel + kMaskGroup - 1) / kMaskGroup;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t bits = mask.keep_bits(static_cast<uint64_t>(g));
    const int64_t i0 = kMaskGroup * g;
#pragma unroll
    for (int k = 0; k < kMaskGroup; ++k) {
      if (i0 + k < numel) body(i0 + k, ((bits >> k) & 1u) != 0);
    }
  }
}

constexpr int kUnit = kMaskGroup;  // elements per thread step: the bits of one Philox group

// Calls unit(i0, bits) for every whole unit of 8 (bit k: element i0 + k is kept) and
// elem(i, kept) for the numel % 8 elements after them, grid-stride.
template <typename Unit, typename Elem>
__device__ __forceinline__ void for_each_unit_with_mask(int64_t numel, const DropoutMask& mask, Unit unit,
                                                        Elem elem) {
  const int64_t units = numel / kUnit;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t u = first; u < units; u += stride) {
    unit(u * kUnit, mask.keep_bits(static_cast<uint64_t>(u)));
  }
  for (int64_t i = units * kUnit + first; i < numel; i += stride) elem(i, mask.keep(static_cast<uint64_t>(i)));
}

// Eight elements moved as one aligned load or store (two for float, four for double).
template <typename T>
struct alignas(kUnit * sizeof(T)) Pack {
  T v[kUnit];
};

// Whether every pointer is aligned for Pack<T> (the packed kernels need it).
template <typename T>
inline bool pack_aligned(const void* a, const void* b = nullptr) {
  const auto misaligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T>) != 0; };
  return !misaligned(a) && (b == nullptr || !misaligned(b));
}

// dst[i] = keep(i) ? src[i] : 0, eight at a time (pointers aligned for Pack<T>).
template <typename T>
__global__ void __launch_bounds__(kMaskThreads)
    masked_copy_pack_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t numel, DeviceDropout drop) {
  for_each_unit_with_mask(
      numel, load_mask(drop),
      [&](int64_t i0, uint32_t bits) {
        const Pack<T> in = *reinterpret_cast<const Pack<T>*>(src + i0);
        Pack<T> out;
#pragma unroll
        for (int k = 0; k < kUnit; ++k) out.v[k] = ((bits >> k) & 1u) ? in.v[k] : T(0);
        *reinterpret_cast<Pack<T>*>(dst + i0) = out;
      },
      [&](int64_t i, bool kept) { dst[i] = kept ? src[i] : T(0); });
}

// dst[i] += keep(i) ? src[i] : 0 in the accumulation type, eight at a time (aligned).
template <typename T>
__global__ void __launch_bounds__(kMaskThreads)
    masked_add_pack_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t numel, DeviceDropout drop) {
  using acc_t = typename Acc<T>::type;
  for_each_unit_with_mask(
      numel, load_mask(drop),
      [&](int64_t i0, uint32_t bits) {
        if (bits == 0u) return;
        const Pack<T> add = *reinterpret_cast<const Pack<T>*>(src + i0);
        Pack<T> acc = *reinterpret_cast<const Pack<T>*>(dst + i0);
#pragma unroll
        for (int k = 0; k < kUnit; ++k) {
          if ((bits >> k) & 1u) acc.v[k] = static_cast<T>(static_cast<acc_t>(acc.v[k]) + static_cast<acc_t>(add.v[k]));
        }
        *reinterpret_cast<Pack<T>*>(dst + i0) = acc;
      },
      [&](int64_t i, bool kept) {
        if (kept) dst[i] = static_cast<T>(static_cast<acc_t>(dst[i]) + static_cast<acc_t>(src[i]));
      });
}

// dst[i] = keep(i) ? src[i] : 0.
template <typename T>
__global__ void __launch_bounds__(kMaskThreads)
    masked_copy_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t numel, DeviceDropout drop) {
  for_each_with_mask(numel, load_mask(drop), [&](int64_t i, bool kept) { dst[i] = kept ? src[i] : T(0); });
}

// dst[i] = 0 where element i is dropped; kept elements are neither read nor written.
template <typename T>
__global__ void __launch_bounds__(kMaskThreads)
    zero_dropped_kernel(T* __restrict__ dst, int64_t numel, DeviceDropout drop) {
  for_each_unit_with_mask(
      numel, load_mask(drop),
      [&](int64_t i0, uint32_t bits) {
#pragma unroll
        for (int k = 0; k < kUnit; ++k) {
          if (!((bits >> k) & 1u)) dst[i0 + k] = T(0);
        }
      },
      [&](int64_t i, bool kept) {
        if (!kept) dst[i] = T(0);
      });
}

// dst[i] += keep(i) ? src[i] : 0, summed in the accumulation type.
template <typename T>
__global__ void __launch_bounds__(kMaskThreads)
    masked_add_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t numel, DeviceDropout drop) {
  using acc_t = typename Acc<T>::type;
  for_each_with_mask(numel, load_mask(drop), [&](int64_t i, bool kept) {
    if (kept) dst[i] = static_cast<T>(static_cast<acc_t>(dst[i]) + static_cast<acc_t>(src[i]));
  });
}

// Enough blocks to fill the GPU a few times over; the grid-stride loops do the rest
// (one unit or group of 8 elements per thread per step).
inline unsigned mask_blocks(int64_t numel, int sm_count) {
  const int64_t groups = (numel + kMaskGroup - 1) / kMaskGroup;
  const int64_t wanted = (groups + kMaskThreads - 1) / kMaskThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{sm_count} * 8)));
}

}  // namespace peftcore::lowrank_kernels

// Device code for the dropout parts of the fused LoRA linear (lora_compose.h):
// the keep-mask is regenerated from its seed words (read from device memory, so no
// host synchronisation) and applied while a tensor streams through once. Every
// product, skinny or not, is a cuBLAS GEMM (lora_cuda.cu): hand-written skinny
// GEMM kernels on CUDA cores measured 2-8x slower than cuBLAS on an H200.
// No torch headers: T is float, double, c10::Half or c10::BFloat16.
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
// stride; one Philox call gives the bits of 4 consecutive elements (one group per
// thread per iteration).
template <typename Body>
__device__ __forceinline__ void for_each_with_mask(int64_t numel, const DropoutMask& mask, Body body) {
  const int64_t groups = (numel + 3) / 4;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t bits = mask.keep_bits(static_cast<uint64_t>(g));
    const int64_t i0 = 4 * g;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (i0 + k < numel) body(i0 + k, ((bits >> k) & 1u) != 0);
    }
  }
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
  for_each_with_mask(numel, load_mask(drop), [&](int64_t i, bool kept) {
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

// Enough blocks to fill the GPU a few times over; the grid-stride loops do the rest.
inline unsigned mask_blocks(int64_t numel, int sm_count) {
  const int64_t groups = (numel + 3) / 4;
  const int64_t wanted = (groups + kMaskThreads - 1) / kMaskThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{sm_count} * 8)));
}

}  // namespace peftcore::lora_kernels

// Runs peftcore's CUDA kernels on the host, so that CI (no GPU) exercises their index
// math, tiling, masking and bounds: each block's threads are std::threads, with
// barriers for __syncthreads and __syncwarp; the 16-bit types are bit containers with
// round-to-nearest-even conversions. Only what peftcore's kernels use is emulated
// (full-warp __shfl_down_sync, no atomics, no tensor-core fragments).
// Include this before any peftcore kernel header: it stands in for <cuda_runtime.h>,
// <cuda_bf16.h> and <cuda_fp16.h>, which the kernel headers then skip.
#pragma once

#include <array>
#include <barrier>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#define PEFTCORE_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __CUDA_ARCH__ 800

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace emu {
inline thread_local uint3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<std::array<uint64_t, 32>> warp_slots;  // __shfl_down_sync's exchange

// Runs kernel() for every thread of every block: one std::thread per thread of a
// block, which runs the blocks one after another (a barrier between blocks, since
// the emulated shared memory is one static array per kernel).
template <typename Kernel>
void launch(dim3 grid, dim3 block, Kernel kernel) {
  if (block.y != 1 || block.z != 1 || block.x % 32 != 0) throw std::invalid_argument("1-D blocks of whole warps");
  grid_dim = grid;
  block_dim = block;
  std::barrier<> whole_block(block.x);
  block_barrier = &whole_block;
  warp_barriers.clear();
  for (unsigned w = 0; w < block.x / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
  warp_slots.assign(block.x / 32, {});
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < block.x; ++t) {
    threads.emplace_back([=, &whole_block] {
      thread_idx = {t, 0, 0};
      for (unsigned bz = 0; bz < grid.z; ++bz) {
        for (unsigned by = 0; by < grid.y; ++by) {
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            block_idx = {bx, by, bz};
            kernel();
            whole_block.arrive_and_wait();
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
}
}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

// Full-warp masks only: every lane publishes its value, then reads lane + offset's
// (its own past the warp's end).
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  if (mask != 0xffffffffu) throw std::logic_error("emulated __shfl_down_sync: full-warp masks only");
  auto& slots = emu::warp_slots[threadIdx.x / 32];
  const unsigned lane = threadIdx.x % 32;
  std::memcpy(&slots[lane], &v, sizeof(T));
  __syncwarp();
  T out = v;
  if (lane + offset < 32) std::memcpy(&out, &slots[lane + offset], sizeof(T));
  __syncwarp();
  return out;
}

// 16-bit types: bit containers converting to and from float like CUDA's (round to
// nearest even).
struct __nv_bfloat16 {
  uint16_t bits;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f);
  operator float() const;
};
struct __half {
  _Float16 value;
  __half() = default;
  __half(float f) : value(static_cast<_Float16>(f)) {}
  operator float() const { return static_cast<float>(value); }
};

inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    h.bits = static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays NaN
  } else {
    h.bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  return h;
}
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16::__nv_bfloat16(float f) : bits(__float2bfloat16(f).bits) {}
inline __nv_bfloat16::operator float() const { return __bfloat162float(*this); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }

inline float emu_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float emu_to_float(__half v) { return __half2float(v); }
inline float emu_to_float(float v) { return v; }


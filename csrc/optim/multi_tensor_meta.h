// Host side of multi-tensor apply (kernels in optim_kernels.cuh): every tensor's
// chunks get a global number, and the (tensor, chunk) of every block travels in the
// launch's ListMeta, as many launches as its limits need. No torch: the CUDA
// launcher (optim_cuda.cu) and the host emulation test (tests/emulation) share it.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "optim/optim_kernels.cuh"

namespace peftcore::optim_kernels {

// Where each tensor's chunks start in the global chunk numbering.
struct ChunkLayout {
  std::vector<int32_t> first_chunk, n_chunks;
  int64_t total = 0;
};

inline ChunkLayout chunk_layout(const std::vector<int64_t>& numels) {
  ChunkLayout layout;
  for (const int64_t numel : numels) {
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    if (layout.total + chunks >= (int64_t{1} << 31)) throw std::length_error("multi-tensor step: too many chunks");
    layout.first_chunk.push_back(static_cast<int32_t>(layout.total));
    layout.n_chunks.push_back(static_cast<int32_t>(chunks));
    layout.total += chunks;
  }
  return layout;
}

// One tensor of a launch group: its D pointers, size, index in the whole list, flag.
template <int D>
struct Entry {
  std::array<void*, D> ptr;
  int64_t numel;
  int32_t global;
  uint8_t flag;
};

// Packs entries into as few launch(meta, blocks) calls as the metadata limits allow;
// a tensor whose chunks do not fit continues in the next launch.
template <int D, typename Launch>
void multi_tensor_apply(const std::vector<Entry<D>>& entries, const ChunkLayout& layout, const Launch& launch) {
  ListMeta<D> meta{};
  int nt = 0, nb = 0;
  auto set_slot = [&](int slot, const Entry<D>& e) {
    for (int d = 0; d < D; ++d) meta.ptr[d][slot] = e.ptr[d];
    meta.numel[slot] = e.numel;
    meta.global_tensor[slot] = e.global;
    meta.flag[slot] = e.flag;
  };
  for (const Entry<D>& e : entries) {
    if (e.numel == 0) continue;
    set_slot(nt, e);
    const int32_t chunks = layout.n_chunks[e.global];
    for (int32_t c = 0; c < chunks; ++c) {
      meta.block_tensor[nb] = static_cast<uint8_t>(nt);
      meta.block_chunk[nb] = c;
      meta.block_global_chunk[nb] = layout.first_chunk[e.global] + c;
      ++nb;
      const bool last = c == chunks - 1;
      if (nb == kMaxBlocks || (last && nt + 1 == kMaxTensors)) {
        launch(meta, nb);
        nb = 0;
        if (last) {
          nt = -1;
        } else {
          set_slot(0, e);
          nt = 0;
        }
      }
    }
    ++nt;
  }
  if (nb > 0) launch(meta, nb);
}

// The chunk_totals_kernel launches for all tensors: launch(meta), kTotalsBatch
// tensors at a time.
template <typename Launch>
void for_each_totals_batch(const ChunkLayout& layout, const Launch& launch) {
  const int64_t n = static_cast<int64_t>(layout.n_chunks.size());
  for (int64_t base = 0; base < n; base += kTotalsBatch) {
    TotalsMeta meta{};
    meta.count = static_cast<int32_t>(std::min<int64_t>(kTotalsBatch, n - base));
    meta.tensor_base = static_cast<int32_t>(base);
    for (int i = 0; i < meta.count; ++i) {
      meta.first_chunk[i] = layout.first_chunk[base + i];
      meta.n_chunks[i] = layout.n_chunks[base + i];
    }
    launch(meta);
  }
}

}  // namespace peftcore::optim_kernels

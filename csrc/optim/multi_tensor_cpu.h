// Work splitting for multi-tensor CPU passes: every tensor is cut into chunks of
// a fixed size, and chunks (of all tensors together) are spread over threads.
// Per-tensor reductions are summed chunk by chunk in a fixed order, so results
// do not depend on the number of threads.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <vector>

namespace peftcore {

struct TensorChunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

constexpr int64_t kChunkElements = 16384;

inline std::vector<TensorChunk> make_chunks(at::TensorList tensors) {
  std::vector<TensorChunk> chunks;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t n = tensors[t].numel();
    for (int64_t b = 0; b < n; b += kChunkElements) {
      chunks.push_back({static_cast<int64_t>(t), b, std::min(n, b + kChunkElements)});
    }
  }
  return chunks;
}

// body(chunk_index, chunk) for every chunk, in parallel.
template <typename Body>
void parallel_chunks(const std::vector<TensorChunk>& chunks, const Body& body) {
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) body(i, chunks[i]);
  });
}

// Sums per-chunk partials into per-tensor totals, in chunk order.
inline std::vector<double> per_tensor_totals(const std::vector<TensorChunk>& chunks,
                                             const std::vector<double>& partials,
                                             size_t n_tensors) {
  std::vector<double> totals(n_tensors, 0.0);
  for (size_t i = 0; i < chunks.size(); ++i) totals[chunks[i].tensor] += partials[i];
  return totals;
}

// Σ value_of(i) for i in [0, n) in double, over 8 independent lanes so that the
// loop vectorises without reassociating a single sum.
template <typename F>
double lane_sum(int64_t n, const F& value_of) {
  constexpr int kLanes = 8;
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += value_of(i + j);
  }
  double total = 0.0;
  for (; i < n; ++i) total += value_of(i);
  for (double l : lanes) total += l;
  return total;
}

}  // namespace peftcore

// The union of every parameter's delta parts and their weighted sums, written over
// ATen ops only so that it runs on any device with a fixed number of host
// synchronisations (three), whatever the number of parameters: the CUDA backend's
// merge. (The CPU backend merges each parameter's sorted lists directly.)
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace peftcore {

struct MergedDeltas {
  // Per parameter (empty tensors where it has no parts): sorted local indices
  // (int64) and the summed weighted values (`acc` dtype), slices of two buffers.
  std::vector<at::Tensor> indices, deltas;
  at::ScalarType acc;
};

// parts[i]: the entries j of indices/values that belong to params[i] (from
// check_sparse_compose). Checks every list is strictly increasing and inside its
// parameter (one host read for all of them) before returning; throws naming the
// first bad list otherwise. Overlapping indices are summed in part order.
MergedDeltas merge_sparse_parts(const char* op, at::TensorList params, at::TensorList indices, at::TensorList values,
                                at::ArrayRef<double> weights,
                                const std::vector<std::vector<int64_t>>& parts);

}  // namespace peftcore

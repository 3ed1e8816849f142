// The union of every parameter's delta parts and their weighted sums, written over
// ATen ops only so that it runs on any device with a fixed number of host
// synchronisations (three), whatever the number of parameters: the CUDA backend's
// merge. (The CPU backend merges each parameter's sorted lists directly.)
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace peftcore {

struct MergedDeltas {
  // The union of all parameters' indices in one key space (parameter i owns keys
  // [key_offsets[i], key_offsets[i + 1])), sorted, with the summed weighted values
  // (`acc` dtype) at each key. Parameter i's entries are positions
  // [bounds[i], bounds[i + 1]) of both.
  at::Tensor keys, sums;
  std::vector<int64_t> key_offsets, bounds;
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

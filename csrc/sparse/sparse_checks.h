// Validation of the sparse-delta ops, shared by the CPU and CUDA backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace peftcore {

// Each param is a contiguous floating tensor; each indices[j] a 1-D int64 tensor
// with values[j] of the same length, on the device of params[owner[j]]. Order and
// range of the indices are checked by the backends while they read them.
// Returns, per parameter, the entries that belong to it (in entry order).
std::vector<std::vector<int64_t>> check_sparse_compose(at::TensorList params, at::TensorList indices,
                                                       at::TensorList values, at::IntArrayRef owner,
                                                       at::ArrayRef<double> weights,
                                                       const char* op = "sparse_compose_");

void check_sparse_revert(at::TensorList params, at::TensorList indices, at::TensorList originals);

}  // namespace peftcore

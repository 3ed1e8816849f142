// Validation of the sparse-delta ops, shared by the CPU and CUDA backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace peftcore {

// param is a contiguous floating tensor; each indices[i] an int64 1-D tensor on
// param's device with values[i] of the same length (floating, same device).
// Sortedness and range are checked by the backends while they read the indices.
void check_sparse_compose(const at::Tensor& param, at::TensorList indices, at::TensorList values,
                          const std::vector<double>& weights);

void check_sparse_revert(const at::Tensor& param, const at::Tensor& indices,
                         const at::Tensor& originals);

}  // namespace peftcore

// CPU helpers that apply a regenerated dropout mask (common/philox.h) to row
// blocks of a [N, cols] matrix, so no N x cols mask or masked copy ever lives
// longer than one block.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/philox.h"

namespace peftcore {

// Reads the two seed words of a CPU int64 tensor.
DropoutMask make_dropout_mask(const at::Tensor& seed, double p);

// Returns src ∘ keep for rows [row0, row0 + src.size(0)) of the logical matrix
// with `cols` columns (no 1/(1-p) scaling: callers fold it into their scale).
at::Tensor apply_dropout_rows(const at::Tensor& src, int64_t row0, const DropoutMask& mask);

// dst += src ∘ keep for the same row block; dst and src are [rows, cols].
void add_dropout_rows_(at::Tensor& dst, const at::Tensor& src, int64_t row0,
                       const DropoutMask& mask);

// Rows per block for the blocked dropout paths: about 4 MiB of temporaries.
int64_t dropout_block_rows(int64_t cols, int64_t element_size);

}  // namespace peftcore

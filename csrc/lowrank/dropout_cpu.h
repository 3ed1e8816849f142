// CPU helpers for dropout masks regenerated from their seed (common/philox.h).
// Masks live as 0/1 bytes for one row block at a time: no N x cols mask and no
// masked copy of a whole activation ever exists. The helpers are serial; callers
// parallelise over row blocks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/philox.h"

namespace peftcore {

// Reads the two seed words of a CPU int64 tensor.
DropoutMask make_dropout_mask(const at::Tensor& seed, double p);

// keep[i] = 1 if flat element flat_begin + i is kept, for i in [0, count).
void fill_keep_flags(const DropoutMask& mask, int64_t flat_begin, int64_t count, uint8_t* keep);

// out = src ∘ keep, with out contiguous and shaped like src (keep: one flag per element).
void masked_copy(const at::Tensor& src, const uint8_t* keep, at::Tensor& out);

// dst += src ∘ keep, dst contiguous.
void masked_add_(at::Tensor& dst, const at::Tensor& src, const uint8_t* keep);

// dst = dst ∘ keep in place, dst contiguous.
void zero_dropped_(at::Tensor& dst, const uint8_t* keep);

}  // namespace peftcore

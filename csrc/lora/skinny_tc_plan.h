// Launch geometry of the tensor-core skinny kernels (skinny_tc_kernels.cuh): grids,
// the split of each reduction, the float32 partials' shapes. No torch: the launcher
// (skinny_tc_cuda.cu) and the host emulation test (tests/emulation) share it.
#pragma once

#include <algorithm>
#include <cstdint>

#include "lora/skinny_tc_kernels.cuh"

namespace peftcore::skinny_tc {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t padded_rank(int64_t rank) { return 16 * ceil_div(rank, 16); }

// A reduction of `tiles` tiles cut into `count` splits of `tiles_each` (the last may
// hold fewer), so that other_blocks x count blocks reach about four per SM.
struct Split {
  int64_t tiles_each;
  int64_t count;
};

inline Split split_reduction(int64_t tiles, int64_t other_blocks, int64_t sms) {
  const int64_t wanted = std::clamp<int64_t>(ceil_div(4 * sms, other_blocks), 1, tiles);
  const int64_t each = ceil_div(tiles, wanted);
  return {each, ceil_div(tiles, each)};
}

// shrink over x [rows, cols] at rank r: grid (row_blocks, split.count); partials
// [split.count, padded_rows, padded_rank].
struct ShrinkPlan {
  int64_t row_blocks, padded_rows, padded_rank;
  Split split;
  int64_t k_per_split() const { return split.tiles_each * kShrinkK; }
};

inline ShrinkPlan shrink_plan(int64_t rows, int64_t cols, int64_t rank, int64_t sms) {
  const int64_t row_blocks = ceil_div(rows, kShrinkRows);
  return {row_blocks, row_blocks * kShrinkRows, padded_rank(rank),
          split_reduction(ceil_div(cols, kShrinkK), row_blocks, sms)};
}

// outer over R [rows, cols] at rank r: grid (col_blocks, slabs.count); partials
// [slabs.count, padded_rank, padded_cols].
struct OuterPlan {
  int64_t col_blocks, padded_cols, padded_rank;
  Split slabs;
  int64_t rows_per_slab() const { return slabs.tiles_each * kOuterRows; }
};

inline OuterPlan outer_plan(int64_t rows, int64_t cols, int64_t rank, int64_t sms) {
  const int64_t col_blocks = ceil_div(cols, kOuterCols);
  return {col_blocks, col_blocks * kOuterCols, padded_rank(rank),
          split_reduction(ceil_div(rows, kOuterRows), col_blocks, sms)};
}

// expand into out [rows, cols]: grid (ceil(rows / 64), ceil(cols / 128)).
inline dim3 expand_grid(int64_t rows, int64_t cols) {
  return dim3(static_cast<unsigned>(ceil_div(rows, kExpandRows)), static_cast<unsigned>(ceil_div(cols, kExpandCols)));
}

// sum_partials_kernel: enough blocks of 256 for n outputs, at most 8 per SM.
inline unsigned sum_blocks(int64_t n, int64_t sms) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(n, 256), 1, 8 * sms));
}

}  // namespace peftcore::skinny_tc

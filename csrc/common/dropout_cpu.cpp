#include "common/dropout_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>

namespace peftcore {

DropoutMask make_dropout_mask(const at::Tensor& seed, double p) {
  const at::Tensor s = seed.contiguous();
  const int64_t* words = s.data_ptr<int64_t>();
  DropoutMask mask;
  mask.key = static_cast<uint64_t>(words[0]);
  mask.stream = static_cast<uint64_t>(words[1]);
  mask.threshold = dropout_threshold(p);
  return mask;
}

namespace {

// Calls body(row, col, keep) for every element of the block, one Philox draw
// per 4 consecutive flat indices; rows run in parallel.
template <typename Body>
void for_each_masked(int64_t rows, int64_t cols, int64_t row0, const DropoutMask& mask,
                     const Body& body) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint64_t base = static_cast<uint64_t>(row0 + r) * static_cast<uint64_t>(cols);
      uint64_t group = ~uint64_t{0};
      uint32_t bits = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const uint64_t flat = base + static_cast<uint64_t>(c);
        if ((flat >> 2) != group) {
          group = flat >> 2;
          bits = mask.keep_bits(group);
        }
        body(r, c, (bits >> (flat & 3)) & 1u);
      }
    }
  });
}

}  // namespace

at::Tensor apply_dropout_rows(const at::Tensor& src, int64_t row0, const DropoutMask& mask) {
  const at::Tensor s = src.contiguous();
  at::Tensor out = at::empty_like(s);
  const int64_t rows = s.size(0), cols = s.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "apply_dropout_rows", [&] {
    const scalar_t* in = s.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for_each_masked(rows, cols, row0, mask, [&](int64_t r, int64_t c, bool keep) {
      o[r * cols + c] = keep ? in[r * cols + c] : scalar_t(0);
    });
  });
  return out;
}

void add_dropout_rows_(at::Tensor& dst, const at::Tensor& src, int64_t row0,
                       const DropoutMask& mask) {
  TORCH_INTERNAL_ASSERT(dst.is_contiguous() && dst.sizes() == src.sizes());
  const at::Tensor s = src.contiguous();
  const int64_t rows = s.size(0), cols = s.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "add_dropout_rows_", [&] {
    const scalar_t* in = s.data_ptr<scalar_t>();
    scalar_t* o = dst.data_ptr<scalar_t>();
    for_each_masked(rows, cols, row0, mask, [&](int64_t r, int64_t c, bool keep) {
      if (keep) o[r * cols + c] += in[r * cols + c];
    });
  });
}

int64_t dropout_block_rows(int64_t cols, int64_t element_size) {
  constexpr int64_t kBlockBytes = int64_t{4} << 20;
  return std::max<int64_t>(1, kBlockBytes / std::max<int64_t>(1, cols * element_size));
}

}  // namespace peftcore

// Exact top-k of |theta - theta0| over many tensors on the CPU (LT-SFT mask
// selection), without a second copy of the model. The magnitudes are never stored:
// each pass recomputes them, as float32 bit patterns (non-negative floats order
// like their bits), straight from theta and theta0.
//   pass 1: histogram of the high 16 bits -> the bucket holding the k-th largest;
//   pass 2: histogram of the low 16 bits inside that bucket -> the exact threshold;
//   pass 3: per chunk, the count of entries above it and of ties at it;
//   pass 4: the indices: all above, then the first ties in the pairs' order and
//           flat index order (the documented tie rule, as reference.magnitude_top_k).
// Chunks run in parallel with per-thread histograms; written as ATen ops, the same
// radix select needs a temporary per operation and a single-threaded bincount, about
// eight memory passes more than these four.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

namespace peftcore {
namespace {

constexpr int64_t kChunk = 1 << 16;
constexpr uint32_t kBins = 1 << 16;
constexpr uint32_t kNonFinite = 0x7f800000u;  // bits of +inf: every key at or above is inf or NaN

// The bits of |float(t) - float(t0)|, exactly as the Python/CUDA paths compute it.
template <typename T>
inline uint32_t magnitude_key(T t, T t0) {
  const float d = std::fabs(static_cast<float>(t) - static_cast<float>(t0));
  uint32_t bits;
  std::memcpy(&bits, &d, sizeof(bits));
  return bits;
}

struct Piece {
  int64_t pair, start, length;
};

// Calls body(key, flat index) for every element of the piece, in index order.
template <typename Body>
void for_each_key(const at::Tensor& t0, const at::Tensor& t, const Piece& piece, const Body& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "magnitude_topk", [&] {
    const scalar_t* a = t.const_data_ptr<scalar_t>();
    const scalar_t* b = t0.const_data_ptr<scalar_t>();
    for (int64_t i = piece.start, end = piece.start + piece.length; i < end; ++i) body(magnitude_key(a[i], b[i]), i);
  });
}

// Sum over all pieces of a per-thread 65536-bin histogram filled by fill(piece, hist).
template <typename Fill>
std::vector<int64_t> histogram(const std::vector<Piece>& pieces, const Fill& fill) {
  std::vector<int64_t> total(kBins, 0);
  std::mutex merge;
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> local(kBins, 0);
    for (int64_t p = b; p < e; ++p) fill(pieces[p], local.data());
    const std::lock_guard<std::mutex> lock(merge);
    for (uint32_t i = 0; i < kBins; ++i) total[i] += local[i];
  });
  return total;
}

// The bin holding the `rank`-th largest (1-based) and how many lie in bins above it.
std::pair<uint32_t, int64_t> bin_of_rank(const std::vector<int64_t>& hist, int64_t rank) {
  int64_t above = 0;
  for (int64_t bin = kBins - 1; bin >= 0; --bin) {
    if (above + hist[bin] >= rank) return {static_cast<uint32_t>(bin), above};
    above += hist[bin];
  }
  TORCH_INTERNAL_ASSERT(false, "magnitude_topk: rank beyond the histogram");
  return {0, 0};
}

std::vector<at::Tensor> magnitude_topk_cpu(at::TensorList theta0, at::TensorList theta, int64_t k) {
  constexpr const char* op = "magnitude_topk";
  TORCH_CHECK(theta0.size() == theta.size(), op, ": theta0 and theta must have the same length, got ",
              theta0.size(), " and ", theta.size());
  std::vector<at::Tensor> a(theta.size()), b(theta.size());
  std::vector<Piece> pieces;
  int64_t total = 0;
  for (size_t i = 0; i < theta.size(); ++i) {
    TORCH_CHECK(theta[i].sizes() == theta0[i].sizes() && theta[i].scalar_type() == theta0[i].scalar_type() &&
                    at::isFloatingType(theta[i].scalar_type()),
                op, ": theta[", i, "] and theta0[", i, "] must be floating tensors of one shape and dtype, got ",
                theta[i].scalar_type(), " ", theta[i].sizes(), " and ", theta0[i].scalar_type(), " ",
                theta0[i].sizes());
    a[i] = theta[i].contiguous();
    b[i] = theta0[i].contiguous();
    for (int64_t s = 0; s < a[i].numel(); s += kChunk) {
      pieces.push_back({static_cast<int64_t>(i), s, std::min(kChunk, a[i].numel() - s)});
    }
    total += a[i].numel();
  }
  TORCH_CHECK(k >= 0 && k <= total, op, ": k must be in [0, ", total, "], got ", k);
  std::vector<at::Tensor> out(theta.size());
  if (k == 0) {
    for (size_t i = 0; i < theta.size(); ++i) out[i] = at::empty({0}, theta[i].options().dtype(at::kLong));
    return out;
  }

  // Pass 1 (also finds non-finite differences: their keys top the histogram).
  const auto high = histogram(pieces, [&](const Piece& p, int64_t* hist) {
    for_each_key(b[p.pair], a[p.pair], p, [&](uint32_t key, int64_t) { ++hist[key >> 16]; });
  });
  int64_t non_finite = 0;
  for (uint32_t bin = kNonFinite >> 16; bin < kBins; ++bin) non_finite += high[bin];
  TORCH_CHECK_VALUE(non_finite == 0, "from_diff: theta - theta0 has non-finite values (", non_finite, " entries)");
  const auto [bucket, above_bucket] = bin_of_rank(high, k);
  // Pass 2.
  const auto low = histogram(pieces, [&, bucket = bucket](const Piece& p, int64_t* hist) {
    for_each_key(b[p.pair], a[p.pair], p, [&](uint32_t key, int64_t) {
      if ((key >> 16) == bucket) ++hist[key & 0xFFFFu];
    });
  });
  const auto [low_bin, above_in_bucket] = bin_of_rank(low, k - above_bucket);
  const uint32_t threshold = (bucket << 16) | low_bin;
  int64_t ties_left = k - above_bucket - above_in_bucket;

  // Pass 3: per piece, entries above the threshold and ties at it.
  const int64_t n_pieces = static_cast<int64_t>(pieces.size());
  std::vector<int64_t> above(n_pieces), ties(n_pieces);
  at::parallel_for(0, n_pieces, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      int64_t up = 0, eq = 0;
      for_each_key(b[pieces[p].pair], a[pieces[p].pair], pieces[p], [&](uint32_t key, int64_t) {
        up += key > threshold;
        eq += key == threshold;
      });
      above[p] = up;
      ties[p] = eq;
    }
  });
  // Ties taken in piece order (pairs' order, then index order); output offsets.
  std::vector<int64_t> take(n_pieces), offset(n_pieces), per_pair(theta.size(), 0);
  for (int64_t p = 0; p < n_pieces; ++p) {
    take[p] = std::min(ties[p], ties_left);
    ties_left -= take[p];
    offset[p] = per_pair[pieces[p].pair];
    per_pair[pieces[p].pair] += above[p] + take[p];
  }
  for (size_t i = 0; i < theta.size(); ++i) out[i] = at::empty({per_pair[i]}, theta[i].options().dtype(at::kLong));

  // Pass 4: the indices, sorted within each pair by construction.
  at::parallel_for(0, n_pieces, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      int64_t* dst = out[pieces[p].pair].mutable_data_ptr<int64_t>() + offset[p];
      int64_t taken = 0;
      const int64_t quota = take[p];
      for_each_key(b[pieces[p].pair], a[pieces[p].pair], pieces[p], [&](uint32_t key, int64_t i) {
        if (key > threshold || (key == threshold && taken++ < quota)) *dst++ = i;
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(peftcore, CPU, m) { m.impl("magnitude_topk", &magnitude_topk_cpu); }

}  // namespace peftcore

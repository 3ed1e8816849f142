#include "common/dropout_cpu.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// Philox4x32-10 for `groups` consecutive counters, 4 words each, in counter
// order; bit-identical to philox4x32_10 in philox.h (tested against the
// reference). The AVX2 path runs 8 counters at a time in 64-bit lanes
// (_mm256_mul_epu32 gives the 32x32->64 products); it is chosen at run time.
void philox_words_scalar(uint64_t group0, int64_t groups, uint64_t stream, uint64_t key,
                         uint32_t* words) {
  for (int64_t g = 0; g < groups; ++g) {
    const Philox4 r = philox4x32_10(group0 + static_cast<uint64_t>(g), stream, key);
    for (int j = 0; j < 4; ++j) words[4 * g + j] = r.v[j];
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PEFTCORE_HAVE_AVX2_PATH 1

// Counters c..c+3, bits [shift, shift + 32) of each, zero-extended into 64-bit lanes.
__attribute__((target("avx2"))) inline __m256i counter_lanes(uint64_t c, int shift) {
  const auto part = [](uint64_t v) { return static_cast<long long>(static_cast<uint32_t>(v)); };
  return _mm256_set_epi64x(part((c + 3) >> shift), part((c + 2) >> shift), part((c + 1) >> shift),
                           part(c >> shift));
}

__attribute__((target("avx2"))) void philox_words_avx2(uint64_t group0, int64_t groups,
                                                       uint64_t stream, uint64_t key,
                                                       uint32_t* words) {
  const __m256i mul0 = _mm256_set1_epi64x(0xD2511F53), mul1 = _mm256_set1_epi64x(0xCD9E8D57);
  const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFF);
  const __m256i stream_lo = _mm256_set1_epi64x(static_cast<uint32_t>(stream));
  const __m256i stream_hi = _mm256_set1_epi64x(static_cast<uint32_t>(stream >> 32));
  __m256i round_key0[10], round_key1[10];
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int r = 0; r < 10; ++r, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
    round_key0[r] = _mm256_set1_epi64x(k0);
    round_key1[r] = _mm256_set1_epi64x(k1);
  }
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    const uint64_t c = group0 + static_cast<uint64_t>(g);
    // Two independent sets of 4 counters hide the multiply latency.
    __m256i a0 = counter_lanes(c, 0), a1 = counter_lanes(c, 32), a2 = stream_lo, a3 = stream_hi;
    __m256i b0 = counter_lanes(c + 4, 0), b1 = counter_lanes(c + 4, 32), b2 = stream_lo, b3 = stream_hi;
    for (int r = 0; r < 10; ++r) {
      const __m256i pa0 = _mm256_mul_epu32(a0, mul0), pa1 = _mm256_mul_epu32(a2, mul1);
      const __m256i pb0 = _mm256_mul_epu32(b0, mul0), pb1 = _mm256_mul_epu32(b2, mul1);
      a0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa1, 32), a1), round_key0[r]);
      a2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa0, 32), a3), round_key1[r]);
      a1 = _mm256_and_si256(pa1, low32);
      a3 = _mm256_and_si256(pa0, low32);
      b0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb1, 32), b1), round_key0[r]);
      b2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pb0, 32), b3), round_key1[r]);
      b1 = _mm256_and_si256(pb1, low32);
      b3 = _mm256_and_si256(pb0, low32);
    }
    alignas(32) uint64_t out[4][8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out[0][0]), a0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out[0][4]), b0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out[1][0]), a1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out[1][4]), b1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out[2][0]), a2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out[2][4]), b2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out[3][0]), a3);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&out[3][4]), b3);
    for (int i = 0; i < 8; ++i) {
      for (int j = 0; j < 4; ++j) words[4 * (g + i) + j] = static_cast<uint32_t>(out[j][i]);
    }
  }
  philox_words_scalar(group0 + static_cast<uint64_t>(g), groups - g, stream, key, words + 4 * g);
}
#endif

void philox_words(uint64_t group0, int64_t groups, uint64_t stream, uint64_t key, uint32_t* words) {
#ifdef PEFTCORE_HAVE_AVX2_PATH
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return philox_words_avx2(group0, groups, stream, key, words);
#endif
  philox_words_scalar(group0, groups, stream, key, words);
}

}  // namespace

void fill_keep_flags(const DropoutMask& mask, int64_t flat_begin, int64_t count, uint8_t* keep) {
  if (count <= 0) return;
  constexpr int64_t kChunkGroups = 1024;  // 16 KiB of words, stays in L1
  thread_local std::vector<uint32_t> words(4 * kChunkGroups);
  const uint64_t first_group = static_cast<uint64_t>(flat_begin) >> 2;
  const uint64_t last_group = static_cast<uint64_t>(flat_begin + count - 1) >> 2;
  for (uint64_t g0 = first_group; g0 <= last_group; g0 += kChunkGroups) {
    const int64_t groups = std::min<int64_t>(kChunkGroups, static_cast<int64_t>(last_group - g0 + 1));
    philox_words(g0, groups, mask.stream, mask.key, words.data());
    // Flat indices covered by this chunk, clipped to the requested range.
    const int64_t lo = std::max<int64_t>(flat_begin, static_cast<int64_t>(g0 * 4));
    const int64_t hi = std::min<int64_t>(flat_begin + count, static_cast<int64_t>((g0 + groups) * 4));
    // Restrict-qualified locals: uint8_t stores may alias anything otherwise,
    // which keeps the compiler from vectorising the compare.
    const uint32_t* __restrict w = words.data() + (lo - static_cast<int64_t>(g0 * 4));
    uint8_t* __restrict k = keep + (lo - flat_begin);
    const uint32_t threshold = mask.threshold;
    for (int64_t i = 0; i < hi - lo; ++i) k[i] = static_cast<uint8_t>((w[i] >> 8) >= threshold);
  }
}

void masked_copy(const at::Tensor& src, const uint8_t* keep, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && out.sizes() == src.sizes());
  const at::Tensor s = src.contiguous();
  const int64_t n = s.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "masked_copy", [&] {
    const scalar_t* __restrict in = s.const_data_ptr<scalar_t>();
    const uint8_t* __restrict k = keep;
    scalar_t* __restrict o = out.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = k[i] ? in[i] : scalar_t(0);
  });
}

void masked_add_(at::Tensor& dst, const at::Tensor& src, const uint8_t* keep) {
  TORCH_INTERNAL_ASSERT(dst.is_contiguous() && dst.sizes() == src.sizes());
  const at::Tensor s = src.contiguous();
  const int64_t n = s.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "masked_add_", [&] {
    const scalar_t* __restrict in = s.const_data_ptr<scalar_t>();
    const uint8_t* __restrict k = keep;
    scalar_t* __restrict o = dst.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = k[i] ? static_cast<scalar_t>(o[i] + in[i]) : o[i];
  });
}

}  // namespace peftcore

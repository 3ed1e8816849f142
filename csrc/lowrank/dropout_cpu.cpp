#include "lowrank/dropout_cpu.h"

#include "common/cpu_features.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstring>
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
// (_mm256_mul_epu32 gives the 32x32->64 products), the AVX-512 path 16; the
// widest the CPU has is chosen at run time.
void philox_words_scalar(uint64_t group0, int64_t groups, uint64_t stream, uint64_t key,
                         uint32_t* words) {
  for (int64_t g = 0; g < groups; ++g) {
    const Philox4 r = philox4x32_10(group0 + static_cast<uint64_t>(g), stream, key);
    for (int j = 0; j < 4; ++j) words[4 * g + j] = r.v[j];
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PEFTCORE_HAVE_AVX2_PATH 1

// Ten Philox4x32-10 rounds on two independent 4-word states a0..a3 and b0..b3 (two
// sets of counters hide the multiply latency), one word per 64-bit lane, for one
// vector width: MUL is its 32x32->64 multiply of the low halves (mul_epu32), XOR /
// SRL / AND its xor, 64-bit right shift and and; round_key0/1[r] the broadcast keys.
// A macro, not a template: the intrinsics of each width only inline into functions
// compiled for that width (a template over vector operators did not inline them and
// ran slower).
#define PEFTCORE_PHILOX_TEN_ROUNDS(MUL, XOR, SRL, AND)                     \
  for (int r = 0; r < 10; ++r) {                                           \
    const auto pa0 = MUL(a0, mul0), pa1 = MUL(a2, mul1);                   \
    const auto pb0 = MUL(b0, mul0), pb1 = MUL(b2, mul1);                   \
    a0 = XOR(XOR(SRL(pa1, 32), a1), round_key0[r]);                        \
    a2 = XOR(XOR(SRL(pa0, 32), a3), round_key1[r]);                        \
    a1 = AND(pa1, low32);                                                  \
    a3 = AND(pa0, low32);                                                  \
    b0 = XOR(XOR(SRL(pb1, 32), b1), round_key0[r]);                        \
    b2 = XOR(XOR(SRL(pb0, 32), b3), round_key1[r]);                        \
    b1 = AND(pb1, low32);                                                  \
    b3 = AND(pb0, low32);                                                  \
  }

// The two states of counters c.. and c + PER.. (LANES(c, shift): bits [shift, shift+32)
// of consecutive counters, one per lane), after their ten rounds.
#define PEFTCORE_PHILOX_TWO_STATES(VEC, LANES, PER, MUL, XOR, SRL, AND)                 \
  VEC a0 = LANES(c, 0), a1 = LANES(c, 32), a2 = stream_lo, a3 = stream_hi;              \
  VEC b0 = LANES(c + PER, 0), b1 = LANES(c + PER, 32), b2 = stream_lo, b3 = stream_hi;  \
  PEFTCORE_PHILOX_TEN_ROUNDS(MUL, XOR, SRL, AND)

// The multipliers, the low-word mask, the stream words and the round keys of `key`,
// broadcast by each width's SET1 (64-bit lanes).
#define PEFTCORE_PHILOX_CONSTANTS(VEC, SET1)                                           \
  const VEC mul0 = SET1(0xD2511F53), mul1 = SET1(0xCD9E8D57), low32 = SET1(0xFFFFFFFF); \
  const VEC stream_lo = SET1(static_cast<uint32_t>(stream));                           \
  const VEC stream_hi = SET1(static_cast<uint32_t>(stream >> 32));                     \
  VEC round_key0[10], round_key1[10];                                                  \
  {                                                                                    \
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);   \
    for (int r = 0; r < 10; ++r, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {               \
      round_key0[r] = SET1(k0);                                                        \
      round_key1[r] = SET1(k1);                                                        \
    }                                                                                  \
  }

// Counters c..c+3, bits [shift, shift + 32) of each, zero-extended into 64-bit lanes.
__attribute__((target("avx2"))) inline __m256i counter_lanes(uint64_t c, int shift) {
  const auto part = [](uint64_t v) { return static_cast<long long>(static_cast<uint32_t>(v)); };
  return _mm256_set_epi64x(part((c + 3) >> shift), part((c + 2) >> shift), part((c + 1) >> shift),
                           part(c >> shift));
}

__attribute__((target("avx2"))) void philox_words_avx2(uint64_t group0, int64_t groups,
                                                       uint64_t stream, uint64_t key,
                                                       uint32_t* words) {
  PEFTCORE_PHILOX_CONSTANTS(__m256i, _mm256_set1_epi64x)
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    const uint64_t c = group0 + static_cast<uint64_t>(g);
    PEFTCORE_PHILOX_TWO_STATES(__m256i, counter_lanes, 4, _mm256_mul_epu32, _mm256_xor_si256, _mm256_srli_epi64,
                               _mm256_and_si256)
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

// The AVX-512 path: 8 counters per vector, two vectors in flight (16 counters), and
// the words put in counter order with two permutes instead of 32 scalar stores
// (faster than the AVX2 path for the masked shrink of a LoRA forward on a Zen 4 CPU).
#define AVX512_FN __attribute__((target("avx512f")))

// Counters c..c+7, bits [shift, shift + 32) of each, zero-extended into 64-bit lanes:
// one vector add, not eight scalar lanes (a fifth of the work per counter otherwise).
AVX512_FN inline __m512i counter_lanes8(uint64_t c, int shift) {
  const __m512i counters = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(c)),
                                            _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFF);
  return shift == 0 ? _mm512_and_si512(counters, low32) : _mm512_srli_epi64(counters, 32);
}

// Words 0..3 of 8 counters (low 32 bits of each 64-bit lane) -> 32 words in counter order.
AVX512_FN inline void store_counter_order(__m512i w0, __m512i w1, __m512i w2, __m512i w3, uint32_t* out) {
  const __m512i w01 = _mm512_or_si512(w0, _mm512_slli_epi64(w1, 32));  // (w0, w1) per counter
  const __m512i w23 = _mm512_or_si512(w2, _mm512_slli_epi64(w3, 32));  // (w2, w3) per counter
  const __m512i first = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
  const __m512i second = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
  _mm512_storeu_si512(out, _mm512_permutex2var_epi64(w01, first, w23));
  _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi64(w01, second, w23));
}

AVX512_FN void philox_words_avx512(uint64_t group0, int64_t groups, uint64_t stream, uint64_t key,
                                   uint32_t* words) {
  PEFTCORE_PHILOX_CONSTANTS(__m512i, _mm512_set1_epi64)
  int64_t g = 0;
  for (; g + 16 <= groups; g += 16) {
    const uint64_t c = group0 + static_cast<uint64_t>(g);
    PEFTCORE_PHILOX_TWO_STATES(__m512i, counter_lanes8, 8, _mm512_mul_epu32, _mm512_xor_si512, _mm512_srli_epi64,
                               _mm512_and_si512)
    store_counter_order(a0, a1, a2, a3, words + 4 * g);
    store_counter_order(b0, b1, b2, b3, words + 4 * (g + 8));
  }
  philox_words_scalar(group0 + static_cast<uint64_t>(g), groups - g, stream, key, words + 4 * g);
}
#endif

void philox_words(uint64_t group0, int64_t groups, uint64_t stream, uint64_t key, uint32_t* words) {
#ifdef PEFTCORE_HAVE_AVX2_PATH
  if (avx512_kernels_enabled()) return philox_words_avx512(group0, groups, stream, key, words);
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
  thread_local std::vector<uint16_t> halves(2 * words.size());
  const uint64_t first_group = static_cast<uint64_t>(flat_begin) / kMaskGroup;
  const uint64_t last_group = static_cast<uint64_t>(flat_begin + count - 1) / kMaskGroup;
  for (uint64_t g0 = first_group; g0 <= last_group; g0 += kChunkGroups) {
    const int64_t groups = std::min<int64_t>(kChunkGroups, static_cast<int64_t>(last_group - g0 + 1));
    philox_words(g0, groups, mask.stream, mask.key, words.data());
    // Element e of the chunk is half e % 2 (low first) of word e / 2 (philox.h), i.e.
    // half-word e in memory order on a little-endian machine.
#if defined(__BYTE_ORDER__)
    static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the half-words are read in memory order");
#endif
    std::memcpy(halves.data(), words.data(), static_cast<size_t>(groups) * 4 * sizeof(uint32_t));
    // Flat indices covered by this chunk, clipped to the requested range.
    const int64_t chunk_first = static_cast<int64_t>(g0) * kMaskGroup;
    const int64_t lo = std::max<int64_t>(flat_begin, chunk_first);
    const int64_t hi = std::min<int64_t>(flat_begin + count, chunk_first + groups * kMaskGroup);
    // Restrict-qualified locals: uint8_t stores may alias anything otherwise,
    // which keeps the compiler from vectorising the compare.
    const uint16_t* __restrict h = halves.data() + (lo - chunk_first);
    uint8_t* __restrict k = keep + (lo - flat_begin);
    const uint32_t threshold = mask.threshold;
    for (int64_t i = 0; i < hi - lo; ++i) k[i] = static_cast<uint8_t>(h[i] >= threshold);
  }
}

namespace {

#ifdef PEFTCORE_HAVE_AVX2_PATH
// 16 keep bytes -> a lane mask (AVX-512F: widen to 32-bit lanes, test non-zero).
AVX512_FN inline __mmask16 keep_mask16(const uint8_t* keep) {
  const __m512i k = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(keep)));
  return _mm512_test_epi32_mask(k, k);
}

// The float32 loops below, 16 elements per step: GCC left the byte-flag selects
// scalar, a visible share of the LoRA step with dropout.
AVX512_FN void masked_copy_f32_avx512(const float* in, const uint8_t* keep, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_maskz_loadu_ps(keep_mask16(keep + i), in + i));
  for (; i < n; ++i) out[i] = keep[i] ? in[i] : 0.0f;
}

AVX512_FN void masked_add_f32_avx512(float* dst, const float* in, const uint8_t* keep, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 d = _mm512_loadu_ps(dst + i);
    _mm512_storeu_ps(dst + i, _mm512_mask_add_ps(d, keep_mask16(keep + i), d, _mm512_loadu_ps(in + i)));
  }
  for (; i < n; ++i) dst[i] = keep[i] ? dst[i] + in[i] : dst[i];
}

// 16-bit elements (bf16, fp16): dropping is zeroing bits, so 16 lanes of AVX2 do it
// without converting: 16 keep bytes widen to 16-bit lanes of all-ones or zero.
__attribute__((target("avx2"))) inline __m256i keep_lanes16(const uint8_t* keep) {
  const __m256i k = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(keep)));
  return _mm256_cmpgt_epi16(k, _mm256_setzero_si256());
}

// out = in where kept, 0 where dropped (in == out allowed), 16-bit elements.
__attribute__((target("avx2"))) void masked_copy_16bit_avx2(const uint16_t* in, const uint8_t* keep, uint16_t* out,
                                                            int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_and_si256(v, keep_lanes16(keep + i)));
  }
  for (; i < n; ++i) out[i] = keep[i] ? in[i] : uint16_t{0};  // +0.0 in bf16 and fp16
}

AVX512_FN void zero_dropped_f32_avx512(float* dst, const uint8_t* keep, int64_t n) {
  int64_t i = 0;
  const __m512 zero = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) _mm512_mask_storeu_ps(dst + i, static_cast<__mmask16>(~keep_mask16(keep + i)), zero);
  for (; i < n; ++i) dst[i] = keep[i] ? dst[i] : 0.0f;
}
#endif

}  // namespace

void masked_copy(const at::Tensor& src, const uint8_t* keep, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(out.is_contiguous() && out.sizes() == src.sizes());
  const at::Tensor s = src.contiguous();
  const int64_t n = s.numel();
#ifdef PEFTCORE_HAVE_AVX2_PATH
  if (s.scalar_type() == at::kFloat && avx512_kernels_enabled()) {
    return masked_copy_f32_avx512(s.const_data_ptr<float>(), keep, out.mutable_data_ptr<float>(), n);
  }
  if (s.element_size() == 2 && avx2_kernels_enabled()) {
    return masked_copy_16bit_avx2(static_cast<const uint16_t*>(s.const_data_ptr()), keep,
                                  static_cast<uint16_t*>(out.mutable_data_ptr()), n);
  }
#endif
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
#ifdef PEFTCORE_HAVE_AVX2_PATH
  if (s.scalar_type() == at::kFloat && avx512_kernels_enabled()) {
    return masked_add_f32_avx512(dst.mutable_data_ptr<float>(), s.const_data_ptr<float>(), keep, n);
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "masked_add_", [&] {
    const scalar_t* __restrict in = s.const_data_ptr<scalar_t>();
    const uint8_t* __restrict k = keep;
    scalar_t* __restrict o = dst.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = k[i] ? static_cast<scalar_t>(o[i] + in[i]) : o[i];
  });
}

void zero_dropped_(at::Tensor& dst, const uint8_t* keep) {
  TORCH_INTERNAL_ASSERT(dst.is_contiguous());
  const int64_t n = dst.numel();
#ifdef PEFTCORE_HAVE_AVX2_PATH
  if (dst.scalar_type() == at::kFloat && avx512_kernels_enabled()) {
    return zero_dropped_f32_avx512(dst.mutable_data_ptr<float>(), keep, n);
  }
  if (dst.element_size() == 2 && avx2_kernels_enabled()) {
    auto* d = static_cast<uint16_t*>(dst.mutable_data_ptr());
    return masked_copy_16bit_avx2(d, keep, d, n);
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dst.scalar_type(), "zero_dropped_", [&] {
    const uint8_t* __restrict k = keep;
    scalar_t* __restrict o = dst.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = k[i] ? o[i] : scalar_t(0);
  });
}

}  // namespace peftcore

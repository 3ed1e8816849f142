// Counter-based dropout masks that CPU and CUDA compute bit for bit alike.
//
// The keep/drop decision for element `i` (flat row-major index into the logical
// [N, in] input) is a pure function of (seed, i), so backward regenerates the
// mask from two int64 seed words instead of storing it. Philox4x32-10
// (Salmon et al., SC'11) yields 4 random 32-bit words per counter value, and each
// word serves two elements with its 16-bit halves: element i uses half i % 2 (the
// low half first) of word (i / 2) % 4 of counter i / 8. Eight elements per Philox
// call, not four: the mask generation, not the memory traffic, bounded the dropout
// passes on an H200, and 16-bit thresholds still place p within 2^-16.
//
// No torch headers: this file compiles in host C++ and in device code.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace peftcore {

struct Philox4 {
  uint32_t v[4];
};

PEFTCORE_HD_FN uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// Philox4x32 with 10 rounds; counter = (group, stream), key = key64.
PEFTCORE_HD_FN Philox4 philox4x32_10(uint64_t group, uint64_t stream, uint64_t key64) {
  uint32_t c0 = static_cast<uint32_t>(group), c1 = static_cast<uint32_t>(group >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(key64), k1 = static_cast<uint32_t>(key64 >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = mulhilo32(0xCD9E8D57u, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

constexpr int kMaskGroup = 8;  // elements per Philox call (counter value)

// Everything a kernel needs to regenerate one dropout mask.
struct DropoutMask {
  uint64_t key = 0;     // seed word 0
  uint64_t stream = 0;  // seed word 1
  // An element is kept when its 16-bit random half-word is >= threshold, i.e. with
  // probability 1 - ceil(p * 2^16) / 2^16. Integer compares keep CPU and CUDA
  // identical.
  uint32_t threshold = 0;

  // Bit k of the result says whether element kMaskGroup * group + k is kept.
  PEFTCORE_HD uint32_t keep_bits(uint64_t group) const {
    const Philox4 r = philox4x32_10(group, stream, key);
    uint32_t bits = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int w = 0; w < 4; ++w) {
      bits |= static_cast<uint32_t>((r.v[w] & 0xFFFFu) >= threshold) << (2 * w);
      bits |= static_cast<uint32_t>((r.v[w] >> 16) >= threshold) << (2 * w + 1);
    }
    return bits;
  }

  PEFTCORE_HD bool keep(uint64_t flat_index) const {
    return (keep_bits(flat_index >> 3) >> (flat_index & 7)) & 1u;
  }
};

inline uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(std::ceil(p * 65536.0));
}

}  // namespace peftcore

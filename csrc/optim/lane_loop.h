// lane_loop: a loop whose body accumulates two sums, written so that it vectorises.
//
// Defined in an anonymous namespace on purpose: this header is compiled into the
// per-ISA optimizer files (AVX2 and baseline), and internal linkage keeps each
// file's copy its own (see common/host_device.h).
#pragma once

#include <cstdint>

namespace peftcore {
namespace {

// kLanes independent partial sums let the compiler vectorise the loop (one running
// sum would stay scalar); lanes are flushed to float64 every kFlush elements.
constexpr int kLanes = 16;
constexpr int64_t kFlush = 1024;

template <typename C, typename Body>
void lane_loop(int64_t n, double* sum_a, double* sum_b, const Body& body) {
  double total_a = 0.0, total_b = 0.0;
  C a[kLanes], b[kLanes];
  int64_t i = 0;
  while (i + kLanes <= n) {
    for (int j = 0; j < kLanes; ++j) a[j] = b[j] = C(0);
    const int64_t limit = i + kFlush < n - kLanes + 1 ? i + kFlush : n - kLanes + 1;
    for (; i < limit; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) body(i + j, a[j], b[j]);
    }
    for (int j = 0; j < kLanes; ++j) {
      total_a += a[j];
      total_b += b[j];
    }
  }
  for (; i < n; ++i) {
    C ta = 0, tb = 0;
    body(i, ta, tb);
    total_a += ta;
    total_b += tb;
  }
  *sum_a = total_a;
  *sum_b = total_b;
}

}  // namespace
}  // namespace peftcore

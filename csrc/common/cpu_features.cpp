#include "common/cpu_features.h"

#include <atomic>

namespace peftcore {
namespace {

std::atomic<bool>& vector_switch() {
  static std::atomic<bool> enabled{true};
  return enabled;
}

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

}  // namespace

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx512f");  // libgcc also checks the OS saves ZMM state
  return has;
#else
  return false;
#endif
}

bool cpu_vector_kernels_enabled() { return vector_switch().load(std::memory_order_relaxed); }

void set_cpu_vector_kernels_enabled(bool enabled) { vector_switch().store(enabled); }

bool avx512_kernels_enabled() { return cpu_vector_kernels_enabled() && cpu_has_avx512(); }

bool avx2_kernels_enabled() { return cpu_vector_kernels_enabled() && cpu_has_avx2(); }

}  // namespace peftcore

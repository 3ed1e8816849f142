#include "common/cpu_features.h"

#include <c10/util/Exception.h>

#include <atomic>

namespace peftcore {
namespace {

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx512f");  // libgcc also checks the OS saves ZMM state
#else
  return false;
#endif
}

std::atomic<bool>& avx512_switch() {
  static std::atomic<bool> enabled{cpu_has_avx512()};
  return enabled;
}

}  // namespace

bool avx512_kernels_enabled() { return avx512_switch().load(std::memory_order_relaxed); }

void set_avx512_kernels_enabled(bool enabled) {
  TORCH_CHECK(!enabled || cpu_has_avx512(), "the AVX-512 kernels cannot be enabled: this CPU has no AVX-512F");
  avx512_switch().store(enabled);
}

}  // namespace peftcore

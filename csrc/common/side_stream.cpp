#include "common/side_stream.h"

#include <atomic>

namespace peftcore {
namespace {

std::atomic<bool>& side_stream_switch() {
  static std::atomic<bool> enabled{false};
  return enabled;
}

}  // namespace

bool side_stream_enabled() { return side_stream_switch().load(std::memory_order_relaxed); }

void set_side_stream_enabled(bool enabled) { side_stream_switch().store(enabled); }

}  // namespace peftcore

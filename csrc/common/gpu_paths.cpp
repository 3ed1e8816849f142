#include "common/gpu_paths.h"

#include <atomic>

namespace peftcore {
namespace {

std::atomic<bool> side_stream{false};
std::atomic<bool> tc_skinny{false};

}  // namespace

bool side_stream_enabled() { return side_stream.load(std::memory_order_relaxed); }
void set_side_stream_enabled(bool enabled) { side_stream.store(enabled); }

bool tc_skinny_enabled() { return tc_skinny.load(std::memory_order_relaxed); }
void set_tc_skinny_enabled(bool enabled) { tc_skinny.store(enabled); }

}  // namespace peftcore

// The low-rank engine's CUDA dropout kernels (csrc/lowrank/lowrank_kernels.cuh,
// packed and element-by-element) run on the host through cuda_host_emulation.h, with
// the launcher's grid, against the host evaluation of the same Philox mask
// (common/philox.h), bit for bit. Built and run by tests/test_cuda_kernels_emulated.py
// with AddressSanitizer: an out-of-bounds read or write aborts the run.
// Prints one line per case ("ok ..." or "FAIL ..."); exit status 1 on any failure.
#include "cuda_host_emulation.h"
// clang-format off
#include "lowrank/lowrank_kernels.cuh"
// clang-format on

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace peftcore;

struct Mask {
  int64_t seed[2] = {0x5eed1234, -77};
  double p;
  DropoutMask host;
  lowrank_kernels::DeviceDropout device;

  explicit Mask(double p_) : p(p_) {
    host.key = static_cast<uint64_t>(seed[0]);
    host.stream = static_cast<uint64_t>(seed[1]);
    host.threshold = dropout_threshold(p);
    if (p > 0) {
      device.seed = seed;
      device.threshold = host.threshold;
    }
  }
  double keep(int64_t flat) const { return p == 0 || host.keep(static_cast<uint64_t>(flat)) ? 1.0 : 0.0; }
};

int failures = 0;

// The dropout kernels of lowrank_kernels.cuh over `numel` elements, grid as the launcher
// sizes it; every result must be bit-identical to the host evaluation.
template <typename T>
void dropout_kernels_case(int64_t numel, double p, int sms) {
  namespace lk = peftcore::lowrank_kernels;
  std::mt19937 gen(numel * 3 + 1);
  std::normal_distribution<float> normal;
  const Mask mask(p);
  std::vector<uint4> src_store(numel * sizeof(T) / 16 + 2), dst_store(numel * sizeof(T) / 16 + 2);
  T* src = reinterpret_cast<T*>(src_store.data());
  T* dst = reinterpret_cast<T*>(dst_store.data());
  std::vector<T> start(numel);
  for (int64_t i = 0; i < numel; ++i) {
    src[i] = T(normal(gen));
    start[i] = T(normal(gen));
  }
  const dim3 grid(lk::mask_blocks(numel, sms)), block(lk::kMaskThreads);
  const auto bits_of = [](T v) {
    uint32_t u = 0;
    std::memcpy(&u, &v, sizeof(T) < 4 ? sizeof(T) : 4);
    return u;
  };
  const auto check = [&](const std::string& what, auto expected) {
    int64_t bad = -1;
    for (int64_t i = 0; i < numel && bad < 0; ++i) {
      if (bits_of(dst[i]) != bits_of(expected(i))) bad = i;
    }
    const std::string label = what + (sizeof(T) == 2 ? " bf16" : " fp32") + " numel=" + std::to_string(numel) +
                              " p=" + std::to_string(p);
    if (bad >= 0) {
      ++failures;
      std::printf("FAIL %s: element %lld\n", label.c_str(), static_cast<long long>(bad));
    } else {
      std::printf("ok %s\n", label.c_str());
    }
  };
  const auto kept = [&](int64_t i) { return mask.keep(i) != 0.0; };
  const auto copied = [&](int64_t i) { return kept(i) ? src[i] : T(0.0f); };
  const auto added = [&](int64_t i) {
    return kept(i) ? T(static_cast<float>(start[i]) + static_cast<float>(src[i])) : start[i];
  };
  const auto zeroed = [&](int64_t i) { return kept(i) ? start[i] : T(0.0f); };
  const auto reset = [&] { std::copy(start.begin(), start.end(), dst); };

  reset();
  emu::launch(grid, block, [&] { lk::masked_copy_pack_kernel<T>(src, dst, numel, mask.device); });
  check("masked_copy_pack", copied);
  reset();
  emu::launch(grid, block, [&] { lk::masked_copy_kernel<T>(src, dst, numel, mask.device); });
  check("masked_copy", copied);
  reset();
  emu::launch(grid, block, [&] { lk::masked_add_pack_kernel<T>(dst, src, numel, mask.device); });
  check("masked_add_pack", added);
  reset();
  emu::launch(grid, block, [&] { lk::masked_add_kernel<T>(dst, src, numel, mask.device); });
  check("masked_add", added);
  reset();
  emu::launch(grid, block, [&] { lk::zero_dropped_kernel<T>(dst, numel, mask.device); });
  check("zero_dropped", zeroed);
}

}  // namespace

int main() {
  // numel % 8 != 0: the packed kernels' element tail; 1 SM: grid-stride loops wrap.
  dropout_kernels_case<float>(4099, 0.3, 1);
  dropout_kernels_case<__nv_bfloat16>(4101, 0.1, 1);
  dropout_kernels_case<__nv_bfloat16>(7, 0.5, 132);
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}

#include "lowrank/lowrank.h"

namespace peftcore {

std::optional<DropoutSpec> dropout_spec(double p, const std::optional<at::Tensor>& seed) {
  if (p == 0.0) return std::nullopt;
  return DropoutSpec{p, *seed};
}

const LowRankOps& lowrank_ops(const at::Device& device) {
#if PEFTCORE_WITH_CUDA
  if (device.is_cuda()) return kLowRankCuda;
#endif
  return kLowRankCpu;
}

bool merged_weight_pays(int64_t rows, int64_t in, int64_t out, at::ScalarType dtype, int64_t factor) {
  return (dtype == at::kFloat || dtype == at::kDouble) && rows * (in + out) >= factor * in * out;
}

}  // namespace peftcore

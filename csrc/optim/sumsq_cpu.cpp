// CPU multi_tensor_sumsq: per-tensor sums of squares over chunks of all tensors, in
// float64 and in a fixed order (deterministic for any thread count). Also picks the
// build of the optimizer element loops that this CPU runs (optim_cpu_kernels.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "optim/lane_loop.h"
#include "optim/multi_tensor_cpu.h"
#include "optim/optim_checks.h"
#include "optim/optim_cpu_kernels.h"

namespace peftcore {
namespace {

// Per-tensor sums of squares (float64 accumulation), returned in `out_dtype`.
at::Tensor multi_tensor_sumsq_cpu(at::TensorList tensors) {
  const at::Device device = list_device(tensors);
  check_tensor_list("multi_tensor_sumsq", "tensors", tensors, tensors.size(), device);
  const auto chunks = make_chunks(tensors);
  std::vector<double> partials(chunks.size());
  parallel_chunks(chunks, [&](int64_t i, const TensorChunk& c) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tensors[c.tensor].scalar_type(), "sumsq", [&] {
      const scalar_t* x = tensors[c.tensor].const_data_ptr<scalar_t>() + c.begin;
      partials[i] = lane_sum(c.end - c.begin, [&](int64_t k) {
        const double v = static_cast<double>(x[k]);
        return v * v;
      });
    });
  });
  const auto totals = per_tensor_totals(chunks, partials, tensors.size());
  const bool any_double = std::any_of(tensors.begin(), tensors.end(),
                                      [](const at::Tensor& t) { return t.scalar_type() == at::kDouble; });
  at::Tensor out = at::empty({static_cast<int64_t>(tensors.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(totals.begin(), totals.end(), out.mutable_data_ptr<double>());
  return any_double ? out : out.to(at::kFloat);
}

}  // namespace

const OptimCpuKernels& optim_cpu_kernels() {
#if PEFTCORE_HAVE_AVX2_KERNELS
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return cpu_avx2::kOptimKernels;
#endif
  return cpu_default::kOptimKernels;
}

TORCH_LIBRARY_IMPL(peftcore, CPU, m) { m.impl("multi_tensor_sumsq", &multi_tensor_sumsq_cpu); }

}  // namespace peftcore

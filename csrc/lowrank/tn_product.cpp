#include "lowrank/tn_product.h"

#include <ATen/ops/bmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <vector>

#include "common/parallel.h"
#include "lowrank/skinny_cpu.h"

namespace peftcore {
namespace {

// a^T b with the rows split across threads, each adding its rows into its own
// partial with outer_acc_; partials summed in thread order (deterministic).
at::Tensor tn_product_by_rows(const at::Tensor& a, const at::Tensor& b, at::ScalarType out_dtype) {
  const int64_t rows = a.size(0);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / 64));
  std::vector<at::Tensor> partial(parts);
  parallel_for_below_autograd(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r0 = rows * p / parts, r1 = rows * (p + 1) / parts;
      partial[p] = at::zeros({a.size(1), b.size(1)}, a.options());
      outer_acc_(partial[p], a.narrow(0, r0, r1 - r0), b.narrow(0, r0, r1 - r0));
    }
  });
  for (int64_t p = 1; p < parts; ++p) partial[0].add_(partial[p]);
  return partial[0].to(out_dtype);
}

}  // namespace

at::Tensor tn_product(const at::Tensor& a, const at::Tensor& b, at::ScalarType out_dtype) {
  if (skinny_simd_applies(a, b)) return tn_product_by_rows(a, b, out_dtype);
  const int64_t rows = a.size(0);
  const int64_t slabs = a.device().is_cpu() ? std::min<int64_t>(2 * at::get_num_threads(), rows / 64) : 1;
  if (slabs < 2) return at::mm(a.t(), b).to(out_dtype);
  const int64_t main = rows - rows % slabs, per = main / slabs;
  const at::Tensor parts = at::bmm(a.narrow(0, 0, main).view({slabs, per, a.size(1)}).transpose(1, 2),
                                   b.narrow(0, 0, main).view({slabs, per, b.size(1)}));
  at::Tensor out = at::sum(parts, {0}, false, out_dtype);
  if (main < rows) out.add_(at::mm(a.narrow(0, main, rows - main).t(), b.narrow(0, main, rows - main)));
  return out;
}

bool row_block_grads_fit(const at::Tensor& x) {
  const auto dt = x.scalar_type();
  return x.is_cpu() && (dt == at::kFloat || dt == at::kDouble);
}

void row_block_grads(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden, const at::Tensor& b_cols,
                     double scale, at::Tensor& t, at::Tensor* acc_x, at::Tensor* acc_g) {
  const int64_t n = g.size(0), parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 64));
  // About 4 MiB of g per block: fewer cold starts of the kernels' one-pass-ahead
  // prefetch than with 1 MiB (the block stays in L3).
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 22) / std::max<int64_t>(1, g.size(1) * g.element_size()),
                                            16, std::max<int64_t>(n, 16));
  std::vector<at::Tensor> part_x(parts), part_g(parts);
  parallel_for_below_autograd(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t row_begin = n * p / parts, row_end = n * (p + 1) / parts;
      if (acc_x) part_x[p] = at::zeros_like(*acc_x);
      if (acc_g) part_g[p] = at::zeros_like(*acc_g);
      for (int64_t r0 = row_begin; r0 < row_end; r0 += block) {
        const int64_t rows = std::min(block, row_end - r0);
        const at::Tensor g_block = g.narrow(0, r0, rows);
        // T first: MKL streams the block of g in row order, so dB's pass finds it in cache.
        at::Tensor t_block = t.narrow(0, r0, rows);
        skinny_nt_(t_block, g_block, b_cols, scale);
        if (acc_g) outer_acc_(part_g[p], hidden.narrow(0, r0, rows), g_block);
        if (acc_x) outer_acc_(part_x[p], t_block, x.narrow(0, r0, rows));
      }
    }
  });
  for (int64_t p = 0; p < parts; ++p) {
    if (acc_x) acc_x->add_(part_x[p]);
    if (acc_g) acc_g->add_(part_g[p]);
  }
}

}  // namespace peftcore

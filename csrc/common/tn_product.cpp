#include "common/tn_product.h"

#include <ATen/Parallel.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <vector>

namespace peftcore {

at::Tensor tn_product(const at::Tensor& a, const at::Tensor& b, at::ScalarType out_dtype) {
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

void row_block_grads(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden, const at::Tensor& b_rows,
                     double scale, at::Tensor& t, at::Tensor* acc_x, at::Tensor* acc_g) {
  const int64_t n = g.size(0), parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 64));
  // About 1 MiB of g per block.
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(1, g.size(1) * g.element_size()),
                                            16, std::max<int64_t>(n, 16));
  std::vector<at::Tensor> part_x(parts), part_g(parts);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t row_begin = n * p / parts, row_end = n * (p + 1) / parts;
      if (acc_x) part_x[p] = at::zeros_like(*acc_x);
      if (acc_g) part_g[p] = at::zeros_like(*acc_g);
      for (int64_t r0 = row_begin; r0 < row_end; r0 += block) {
        const int64_t rows = std::min(block, row_end - r0);
        const at::Tensor g_block = g.narrow(0, r0, rows);
        if (acc_g) part_g[p].addmm_(hidden.narrow(0, r0, rows).t(), g_block);
        at::Tensor t_block = t.narrow(0, r0, rows);
        at::mm_out(t_block, g_block, b_rows.t());
        t_block.mul_(scale);
        if (acc_x) part_x[p].addmm_(t_block.t(), x.narrow(0, r0, rows));
      }
    }
  });
  for (int64_t p = 0; p < parts; ++p) {
    if (acc_x) acc_x->add_(part_x[p]);
    if (acc_g) acc_g->add_(part_g[p]);
  }
}

}  // namespace peftcore

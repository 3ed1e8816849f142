#include "common/tn_product.h"

#include <ATen/Parallel.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <algorithm>

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

}  // namespace peftcore

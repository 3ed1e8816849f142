// a^T b for tall operands (a [N, p], b [N, q], N large, p or q small): the
// adapters' weight-gradient reductions (dA = T^T x, dB = G^T hidden, ...).
#pragma once

#include <ATen/core/Tensor.h>

namespace peftcore {

// a^T b as [p, q] in `out_dtype` (partial sums are added in that dtype). On the CPU
// a long N is cut into row slabs run as one batched GEMM and summed after: with its
// long inner dimension and small result, MKL ran the product whole at 33-44% of the
// large GEMM's FLOP rate here (2 cores); in slabs 1.5-1.8x faster (N=4096, r=16).
at::Tensor tn_product(const at::Tensor& a, const at::Tensor& b, at::ScalarType out_dtype);

}  // namespace peftcore

// a^T b for tall operands (a [N, p], b [N, q], N large, p or q small): the
// adapters' weight-gradient reductions (dA = T^T x, dB = G^T hidden, ...).
#pragma once

#include <ATen/core/Tensor.h>

namespace peftcore {

// a^T b as [p, q] in `out_dtype` (partial sums are added in that dtype). On the CPU,
// float32 rows go to the AVX-512 outer_acc_ kernel, split across threads
// (skinny_cpu.h); otherwise a long N is cut into row slabs run as one batched GEMM and
// summed after: with its long inner dimension and small result, MKL runs the product
// whole far below its large-GEMM FLOP rate, and faster in slabs.
at::Tensor tn_product(const at::Tensor& a, const at::Tensor& b, at::ScalarType out_dtype);

// For tall g [N, C], x [N, K] and hidden [N, r], with b_cols [C, r] contiguous: writes
// t = scale * g b_cols into t [N, r] and, when given, adds t^T x into acc_x [r, K]
// and hidden^T g into acc_g [r, C]. The rows go a block at a time on each thread, so
// each block of g serves t and acc_g while it is in cache: g is read once, not twice
// (a small but measured gain on the LoRA layer's step). Partial sums per thread are added
// in thread order (deterministic for a given thread count). CPU, fp32/fp64 (the
// accumulators share the operands' dtype).
void row_block_grads(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden, const at::Tensor& b_cols,
                     double scale, at::Tensor& t, at::Tensor* acc_x, at::Tensor* acc_g);

// Whether row_block_grads serves operands like x (a CPU float32 / float64 tensor).
bool row_block_grads_fit(const at::Tensor& x);

}  // namespace peftcore

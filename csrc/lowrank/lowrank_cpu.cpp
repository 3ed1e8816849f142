// CPU backend of the low-rank engine (lowrank.h).
//
// The N x r products run on the hand-written AVX-512 skinny kernels where the CPU
// has them (skinny_cpu.h), else on MKL / oneDNN; the long-K reductions t^T x run in
// row slabs (tn_product.h). Without dropout and with
// the merged weight forming dx, dB, T and dA share one row-block pass over G and x
// (row_block_grads); otherwise each product is one pass over its operand. With
// dropout the rows go in blocks whose keep-mask is regenerated once and serves both
// dA and dx, so no mask or masked copy outlives a block.
#include <ATen/OpMathType.h>
#include <ATen/record_function.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "common/parallel.h"
#include "lowrank/dropout_cpu.h"
#include "lowrank/lowrank.h"
#include "lowrank/skinny_cpu.h"
#include "lowrank/tn_product.h"

namespace peftcore {
namespace {

// A dropout mask applied one row block at a time, with buffers reused across blocks.
class BlockedDropout {
 public:
  BlockedDropout(const DropoutSpec& dropout, int64_t n, int64_t cols, const at::Tensor& like)
      : mask_(make_dropout_mask(dropout.seed, dropout.p)), n_(n), cols_(cols) {
    // About 1 MiB of the masked operand per block.
    block_ = std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(1, cols * like.element_size()),
                                 64, std::max<int64_t>(n, 64));
    keep_.resize(std::min(block_, n) * cols);
    masked_ = at::empty({std::min(block_, n), cols}, like.options());
  }

  // Calls body(row0, rows) for each block after regenerating its keep flags.
  template <typename Body>
  void for_each_block(const Body& body) {
    for (int64_t row0 = 0; row0 < n_; row0 += block_) {
      const int64_t rows = std::min(block_, n_ - row0);
      {
        RECORD_FUNCTION("peftcore::cpu_dropout_mask", std::vector<c10::IValue>());
        parallel_for_below_autograd(0, rows, 16, [&](int64_t r0, int64_t r1) {
          fill_keep_flags(mask_, (row0 + r0) * cols_, (r1 - r0) * cols_, keep_.data() + r0 * cols_);
        });
      }
      body(row0, rows);
    }
  }

  // src ∘ keep for the current block (src: [rows, cols]).
  at::Tensor masked(const at::Tensor& src) {
    RECORD_FUNCTION("peftcore::cpu_masked_copy", std::vector<c10::IValue>());
    at::Tensor out = masked_.narrow(0, 0, src.size(0));
    parallel_for_below_autograd(0, src.size(0), 16, [&](int64_t r0, int64_t r1) {
      at::Tensor dst = out.narrow(0, r0, r1 - r0);
      masked_copy(src.narrow(0, r0, r1 - r0), keep_.data() + r0 * cols_, dst);
    });
    return out;
  }

  // dst = dst ∘ keep in place for the current block (dst contiguous).
  void zero_dropped(at::Tensor& dst) {
    RECORD_FUNCTION("peftcore::cpu_zero_dropped", std::vector<c10::IValue>());
    parallel_for_below_autograd(0, dst.size(0), 16, [&](int64_t r0, int64_t r1) {
      at::Tensor d = dst.narrow(0, r0, r1 - r0);
      zero_dropped_(d, keep_.data() + r0 * cols_);
    });
  }

  // dst += src ∘ keep for the current block (dst contiguous).
  void add_masked(at::Tensor& dst, const at::Tensor& src) {
    RECORD_FUNCTION("peftcore::cpu_masked_add", std::vector<c10::IValue>());
    parallel_for_below_autograd(0, src.size(0), 16, [&](int64_t r0, int64_t r1) {
      at::Tensor d = dst.narrow(0, r0, r1 - r0);
      masked_add_(d, src.narrow(0, r0, r1 - r0), keep_.data() + r0 * cols_);
    });
  }

 private:
  DropoutMask mask_;
  int64_t n_, cols_, block_;
  std::vector<uint8_t> keep_;
  at::Tensor masked_;
};

// acc += t^T x in `acc_dtype` (float32 when t and x are 16-bit); the first block's
// product becomes acc itself (no zero-filled accumulator and no add: fewer ops per
// call, which is what small steps pay for).
void skinny_tn_acc(const at::Tensor& t, const at::Tensor& x, at::Tensor& acc, at::ScalarType acc_dtype) {
  at::Tensor part = tn_product(t, x, acc_dtype);
  if (acc.defined()) {
    acc.add_(part);
  } else {
    acc = std::move(part);
  }
}

at::Tensor shrink_cpu(const at::Tensor& x, const at::Tensor& A, double scale,
                      const DropoutSpec* dropout) {
  at::Tensor h = at::empty({x.size(0), A.size(0)}, x.options());
  const at::Tensor a_cols = A.t().contiguous();  // [in, r]
  if (dropout == nullptr) {
    parallel_skinny_nt_(h, x, a_cols, scale);
    return h;
  }
  BlockedDropout blocks(*dropout, x.size(0), x.size(1), x);
  blocks.for_each_block([&](int64_t row0, int64_t rows) {
    at::Tensor h_block = h.narrow(0, row0, rows);
    parallel_skinny_nt_(h_block, blocks.masked(x.narrow(0, row0, rows)), a_cols, scale);
  });
  return h;
}

void expand_add_cpu(at::Tensor& y, const at::Tensor& h, const at::Tensor& B) {
  y.addmm_(h, B.t());
}

LowRankGrads backward_cpu(const at::Tensor& g, const at::Tensor& x, const at::Tensor& hidden,
                          const at::Tensor& A, const at::Tensor& B, double scale, const DropoutSpec* dropout,
                          at::Tensor* grad_x, bool want_A, bool want_B) {
  const int64_t n = g.size(0), in = x.size(1), out = g.size(1), rank = A.size(0);
  const at::ScalarType acc_dtype = at::toOpMathType(x.scalar_type());
  const auto acc_options = x.options().dtype(acc_dtype);
  at::Tensor grad_a, grad_b_t;  // accumulators: set by the first block (see skinny_tn_acc)
  const bool need_t = want_A || grad_x != nullptr;
  // Written rather than added to when the caller passes an undefined grad_x.
  const bool write_dx = grad_x != nullptr && !grad_x->defined();
  if (write_dx) *grad_x = at::empty({n, in}, x.options());
  const at::Tensor b_cols = need_t ? B.contiguous() : at::Tensor();  // [out, r]
  at::Tensor t = need_t ? at::empty({n, rank}, x.options()) : at::Tensor();

  // One block's worth of the adapter backward; `masked` applies the block's mask.
  auto block = [&](int64_t row0, int64_t rows, BlockedDropout* masked) {
    const at::Tensor g_block = g.narrow(0, row0, rows);
    if (want_B) skinny_tn_acc(hidden.narrow(0, row0, rows), g_block, grad_b_t, acc_dtype);
    if (!need_t) return;
    at::Tensor t_block = t.narrow(0, row0, rows);
    parallel_skinny_nt_(t_block, g_block, b_cols, scale);
    if (want_A) {
      const at::Tensor x_block = x.narrow(0, row0, rows);
      skinny_tn_acc(t_block, masked ? masked->masked(x_block) : x_block, grad_a, acc_dtype);
    }
    if (grad_x != nullptr) {
      at::Tensor dx_block = grad_x->narrow(0, row0, rows);
      if (masked && write_dx) {
        at::mm_out(dx_block, t_block, A);
        masked->zero_dropped(dx_block);
      } else if (masked) {
        masked->add_masked(dx_block, at::mm(t_block, A));
      } else if (write_dx) {
        at::mm_out(dx_block, t_block, A);
      } else {
        dx_block.addmm_(t_block, A);
      }
    }
  };
  if (dropout == nullptr && grad_x == nullptr && need_t && row_block_grads_fit(x)) {
    if (want_A) grad_a = at::zeros({rank, in}, acc_options);  // row_block_grads adds into them
    if (want_B) grad_b_t = at::zeros({rank, out}, acc_options);
    row_block_grads(g, x, hidden, b_cols, scale, t, want_A ? &grad_a : nullptr, want_B ? &grad_b_t : nullptr);
  } else if (dropout == nullptr) {
    block(0, n, nullptr);
  } else {
    BlockedDropout blocks(*dropout, n, in, x);
    blocks.for_each_block([&](int64_t row0, int64_t rows) { block(row0, rows, &blocks); });
  }

  if (want_A && !grad_a.defined()) grad_a = at::zeros({rank, in}, acc_options);  // no rows
  if (want_B && !grad_b_t.defined()) grad_b_t = at::zeros({rank, out}, acc_options);
  LowRankGrads grads;
  if (want_A) grads.grad_A = grad_a.to(x.scalar_type());
  if (want_B) grads.grad_B = grad_b_t.t().contiguous().to(x.scalar_type());
  return grads;
}

}  // namespace

extern const LowRankOps kLowRankCpu{&shrink_cpu, &expand_add_cpu, &backward_cpu};

}  // namespace peftcore

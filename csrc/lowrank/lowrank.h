// The low-rank engine: the skinny passes that LoRA, Hydra and MiSS share, written
// once per backend (lowrank_cpu.cpp, lowrank_cuda.cu) behind one table of
// functions. A family composes its op from these passes plus the large GEMMs it
// calls through ATen (lora/lora_linear.cpp, hydra/hydra_linear.cpp).
//
//   shrink       hidden = s (m∘x) A^T            [N, r]
//   expand_add_  y += hidden B^T                 [N, C]
//   backward     T = s G B;  dB = G^T hidden;  dA = T^T (m∘x);  dx (+)= m∘(T A)
// m is the dropout keep-mask, regenerated from its seed wherever it is applied: no
// mask and no masked copy of an activation outlives the pass that reads it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace peftcore {

struct DropoutSpec {
  double p = 0.0;
  at::Tensor seed;  // int64 [2] on the device of the data
};

// The dropout of an op call: nothing when p == 0, else the mask of `seed`.
std::optional<DropoutSpec> dropout_spec(double p, const std::optional<at::Tensor>& seed);

// The spec as the passes take it: nullptr for no dropout.
inline const DropoutSpec* spec_ptr(const std::optional<DropoutSpec>& spec) {
  return spec.has_value() ? &*spec : nullptr;
}

struct LowRankGrads {
  at::Tensor grad_A;  // [r, in], or undefined when not asked for
  at::Tensor grad_B;  // [out, r], or undefined when not asked for
};

struct LowRankOps {
  // scale * (m∘x) A^T, with x [N, K] and A [r, K] -> [N, r]; m only if dropout != nullptr.
  at::Tensor (*shrink)(const at::Tensor& x, const at::Tensor& A, double scale, const DropoutSpec* dropout);
  // y += h B^T, with y [N, C] contiguous, h [N, r] and B [C, r].
  void (*expand_add_)(at::Tensor& y, const at::Tensor& h, const at::Tensor& B);
  // The adapter part of backward. With T = scale * G B:
  //   grad_A = T^T (m∘x) (if want_A), grad_B = G^T hidden (if want_B), and, when
  //   grad_x is given: grad_x += m∘(T A) in place if it is defined (grad_x [N, in]
  //   contiguous), else *grad_x = m∘(T A), a new contiguous [N, in] tensor.
  LowRankGrads (*backward)(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& hidden,
                           const at::Tensor& A, const at::Tensor& B, double scale, const DropoutSpec* dropout,
                           at::Tensor* grad_x, bool want_A, bool want_B);
};

// The backends' tables, and the one for a device (CPU, or CUDA when built with it).
// A family registers its kernels for every backend the engine has
// (PEFTCORE_LOWRANK_IMPL below) and takes the passes of its input's device.
extern const LowRankOps kLowRankCpu;
#if PEFTCORE_WITH_CUDA
extern const LowRankOps kLowRankCuda;
#endif
const LowRankOps& lowrank_ops(const at::Device& device);

// TORCH_LIBRARY_IMPL blocks for every backend of the engine, each calling `impl(m)`.
#if PEFTCORE_WITH_CUDA
#define PEFTCORE_LOWRANK_IMPL(impl)                            \
  TORCH_LIBRARY_IMPL(peftcore, CPU, m) { impl(m); }            \
  TORCH_LIBRARY_IMPL(peftcore, CUDA, m) { impl(m); }
#else
#define PEFTCORE_LOWRANK_IMPL(impl) TORCH_LIBRARY_IMPL(peftcore, CPU, m) { impl(m); }
#endif

// Whether an adapter whose delta folds into the weight runs as single GEMMs with the
// merged weight W + delta: float32/float64 only (W + delta rounds once to the weight
// dtype, below the GEMM's own rounding only there), and N large enough that the
// N-sized passes it removes (about N (in + out) element moves each) outweigh forming
// W + delta twice (forward and backward, each an out x in pass with a cold W):
// N (in + out) >= factor * in * out. Each op measures its own factor, because what
// its unmerged path costs differs (the constants sit with their ops).
bool merged_weight_pays(int64_t rows, int64_t in, int64_t out, at::ScalarType dtype, int64_t factor);

}  // namespace peftcore

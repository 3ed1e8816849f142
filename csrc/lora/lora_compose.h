// The fused LoRA linear, written once over a few skinny primitives that each
// backend implements (CPU: blocked ATen GEMMs + regenerated dropout masks; CUDA:
// hand-written kernels). The large GEMMs go through ATen (MKL/oneDNN, cuBLAS).
//
//   forward   hidden = s' (m∘x) A^T                 [N, r]   (s' = s / (1 - p))
//             y      = hidden B^T + b;  y += x W^T         (into y's buffer)
//   backward  T  = s' G B                           [N, r]
//             dB = G^T hidden                       [out, r]
//             dA = T^T (m∘x)                        [r, in]
//             dx = m∘(T A);  dx += G W                     (into dx's buffer)
// The skinny term is written first and the large GEMM adds into it (beta = 1): the
// GEMM reads its C operand tile by tile while it is compute-bound, where adding the
// skinny term afterwards would be one more read-modify-write pass over [N, out] or
// [N, in].
//             dW = G^T x,  db = Σ_rows G            (only when asked for)
// m is the dropout keep-mask regenerated from the seed; it never outlives a block.
//
// Merged-weight path: without dropout, in float32/float64 and when N is large
// enough that an out x in temporary is cheaper than the two N-sized
// read-modify-write passes it replaces, y = x (W + s B A)^T + b and dx = G (W + s B A)
// run as single GEMMs. W + s B A rounds once to the weight dtype: below the GEMM's
// own rounding in fp32/fp64, which is why 16-bit dtypes never take this path.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <functional>
#include <optional>
#include <tuple>
#include <utility>

namespace peftcore {

struct DropoutSpec {
  double p = 0.0;
  at::Tensor seed;  // int64 [2] on the device of the data; undefined when p == 0
};

struct LoraSkinnyGrads {
  at::Tensor grad_A;  // [r, in], or undefined when not asked for
  at::Tensor grad_B;  // [out, r], or undefined when not asked for
  // Set when a backend still computes grad_A / grad_B on another stream (CUDA side
  // stream, common/gpu_paths.h): makes the current stream wait for them.
  std::function<void()> pending;

  // Call once the work meant to overlap with grad_A / grad_B is enqueued, before
  // either is used.
  void wait() {
    if (pending) std::exchange(pending, nullptr)();
  }
};

struct LoraSkinnyOps {
  // scale * (m∘x) A^T, with x [N, K] and A [r, K] -> [N, r]; m only if dropout != nullptr.
  at::Tensor (*shrink)(const at::Tensor& x, const at::Tensor& A, double scale,
                       const DropoutSpec* dropout);
  // y += h B^T, with y [N, C] contiguous, h [N, r] and B [C, r].
  void (*expand_add_)(at::Tensor& y, const at::Tensor& h, const at::Tensor& B);
  // The adapter part of backward. With T = scale * G B:
  //   grad_A = T^T (m∘x) (if want_A), grad_B = G^T hidden (if want_B), and, when
  //   grad_x is given: grad_x += m∘(T A) in place if it is defined (grad_x [N, in]
  //   contiguous), else *grad_x = m∘(T A), a new contiguous [N, in] tensor.
  LoraSkinnyGrads (*backward)(const at::Tensor& grad_out, const at::Tensor& x,
                              const at::Tensor& hidden, const at::Tensor& A, const at::Tensor& B,
                              double scale, const DropoutSpec* dropout, at::Tensor* grad_x,
                              bool want_A, bool want_B);
};

// Whether an adapter whose delta folds into the weight runs as single GEMMs with the
// merged weight (above): float32/float64 only, and N large enough that the N-sized
// passes it removes (about N (in + out) element moves each) outweigh forming W + delta
// twice (forward and backward, each an out x in pass with a cold W):
// N (in + out) >= factor * in * out. The factor is measured per op, because what the
// unmerged path costs differs: LoRA 6 (CPU, in = out = 1024, r = 16, ratio to the frozen
// base, process-alternating A/B: merged 1.16 vs unmerged 1.09 at N = 1024, 1.10 vs 1.085
// at N = 2048, 1.07 vs 1.08 at N = 4096); see each caller for its own.
bool merged_weight_pays(int64_t rows, int64_t in, int64_t out, at::ScalarType dtype, int64_t factor);

std::tuple<at::Tensor, at::Tensor> lora_forward(const LoraSkinnyOps& ops, const at::Tensor& x,
                                                const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias,
                                                const at::Tensor& lora_A,
                                                const at::Tensor& lora_B, double scaling,
                                                double dropout_p,
                                                const std::optional<at::Tensor>& dropout_seed);

// output_mask selects (grad_x, grad_weight, grad_bias, grad_A, grad_B); unselected
// gradients come back as empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_backward(
    const LoraSkinnyOps& ops, const at::Tensor& grad_out, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
    const at::Tensor& lora_hidden, double scaling, double dropout_p,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 5> output_mask);

// The two op entry points for a backend whose primitives are `Ops`:
//   TORCH_LIBRARY_IMPL(peftcore, CPU, m) { register_lora_kernels<kCpuOps>(m); }
template <const LoraSkinnyOps& Ops>
std::tuple<at::Tensor, at::Tensor> lora_linear_kernel(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling, double dropout_p,
    const std::optional<at::Tensor>& dropout_seed) {
  return lora_forward(Ops, x, weight, bias, lora_A, lora_B, scaling, dropout_p, dropout_seed);
}

template <const LoraSkinnyOps& Ops>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& lora_hidden,
    double scaling, double dropout_p, const std::optional<at::Tensor>& dropout_seed,
    std::array<bool, 5> output_mask) {
  return lora_backward(Ops, grad_out, x, weight, lora_A, lora_B, lora_hidden, scaling, dropout_p,
                       dropout_seed, output_mask);
}

template <const LoraSkinnyOps& Ops, typename Library>
void register_lora_kernels(Library& m) {
  m.impl("lora_linear", &lora_linear_kernel<Ops>);
  m.impl("lora_linear_backward", &lora_linear_backward_kernel<Ops>);
}

}  // namespace peftcore

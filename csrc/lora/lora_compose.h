// The fused LoRA linear, written once in terms of three skinny primitives that
// each backend implements (CPU: ATen GEMMs + blocked dropout; CUDA: hand-written
// kernels). The large GEMMs go through ATen (MKL/oneDNN, cuBLAS) on both.
//
//   forward   hidden = s' (m∘x) A^T                 [N, r]   (s' = s / (1 - p))
//             y      = x W^T + b;  y += hidden B^T         (into y's buffer)
//   backward  T  = s' G B                           [N, r]
//             dB = (hidden^T G)^T                   [out, r]
//             dA = T^T (m∘x)                        [r, in]
//             dx = G W;  dx += m∘(T A)                     (into dx's buffer)
//             dW = G^T x,  db = Σ_rows G            (only when asked for)
// m is the dropout keep-mask regenerated from the seed; it never outlives a kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace peftcore {

struct DropoutSpec {
  double p = 0.0;
  at::Tensor seed;  // int64 [2] on the device of the data; undefined when p == 0
  bool active() const { return p > 0.0; }
};

struct LoraSkinnyOps {
  // scale * (m∘x) A^T, with x [N, K] and A [r, K] -> [N, r]; m only if dropout is given.
  at::Tensor (*shrink)(const at::Tensor& x, const at::Tensor& A, double scale,
                       const DropoutSpec* dropout);
  // y += m∘(h Bt^T), with y [N, C] contiguous, h [N, r] and Bt [C, r].
  void (*expand_add_)(at::Tensor& y, const at::Tensor& h, const at::Tensor& Bt,
                      const DropoutSpec* dropout);
  // L^T (m∘R) in L's dtype, with L [N, r] and R [N, K] -> [r, K].
  at::Tensor (*reduce)(const at::Tensor& L, const at::Tensor& R, const DropoutSpec* dropout);
};

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

}  // namespace peftcore

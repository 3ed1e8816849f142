// Launchers of the tensor-core skinny kernels (skinny_tc_kernels.cuh), used by the
// LoRA / Hydra CUDA backend when tc_skinny_applies says so. CUDA builds only.
#pragma once

#include <ATen/core/Tensor.h>

#include "lora/lora_compose.h"

namespace peftcore {

// Whether the kernels take a product whose big operand is `big` [N, K] at rank r:
// the switch is on (common/gpu_paths.h), a CUDA device of compute capability 8.0 or
// newer, bfloat16 or float16, unit column stride, K and the row stride multiples of
// 8, 16-byte aligned data, 1 <= r <= 64.
bool tc_skinny_applies(const at::Tensor& big, int64_t rank);

// scale * (m∘x) w^T -> [N, r] in x's dtype, x [N, K], w [r, K] (any strides; small).
at::Tensor tc_shrink(const at::Tensor& x, const at::Tensor& w, double scale, const DropoutSpec* dropout);

// l^T (m∘big) -> [r, C] in big's dtype, or its transpose [C, r] (contiguous either
// way); l [N, r] (any strides; small), big [N, C].
at::Tensor tc_outer(const at::Tensor& l, const at::Tensor& big, const DropoutSpec* dropout, bool transposed);

// out = m∘(t a), or out += m∘(t a) when accumulate; t [N, r] and a [r, K] (any
// strides; small), out [N, K] contiguous with tc_skinny_applies(out, r).
void tc_expand(const at::Tensor& t, const at::Tensor& a, const DropoutSpec* dropout, at::Tensor& out,
               bool accumulate);

}  // namespace peftcore

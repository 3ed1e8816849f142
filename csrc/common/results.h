// How the ops shape what they return, shared by every adapter family.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

namespace peftcore {

// An empty gradient ([0], like's options): what the backward ops return for a
// gradient that output_mask did not ask for.
inline at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

// A GEMM's result made contiguous where ATen returned it otherwise, so that it can
// be viewed as the output shape.
inline at::Tensor contiguous_result(at::Tensor t) { return t.is_contiguous() ? t : t.contiguous(); }

}  // namespace peftcore

// Validation of the MiSS ops (bone / mini block sums and bat), shared by every
// device: the kernels are written over ATen and registered once.
#pragma once

#include <ATen/core/Tensor.h>

namespace peftcore {

struct BoneDims {
  int64_t rows, in, out, r;  // rows: N, the product of x's leading dimensions
};

// bone_linear / bone_linear_backward: x [..., in], weight [out, in], up [out, r]
// with 1 <= r <= in.
BoneDims check_bone(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& up, int64_t r);

// The bat ops: x [..., in], weight [out, in], block [out / r, r, r] with r dividing
// both in and out.
BoneDims check_bat(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& block);

}  // namespace peftcore

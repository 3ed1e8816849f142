// The MiSS ops (bone / mini block sums and bat): schemas and the autocast rules.
// Kernels: bone_blocksum.cpp and bone_bat.cpp (over ATen, every device); autograd:
// bone_autograd.cpp; fakes and the Python wrappers: python/peftcore/ops/bone.py.
#include <torch/library.h>

#include "bone/bone_schema.h"
#include "common/autocast.h"

using namespace peftcore;  // op names, signatures, impl_autocast

TORCH_LIBRARY_FRAGMENT(peftcore, m) {
  // MiSS bone / mini without dropout: y = x W^T + bias + blocksum_r(x) up^T, where
  // blocksum_r adds the r-wide column blocks of x (the last one zero-padded) and up
  // [out, r] is the (tiled) block transposed. A reduction, not a GEMM with a 0/1
  // matrix; backward adds (G up) to every block of dx.
  // Returns the N x r block sum too: backward reads it (not x) for grad_up.
  m.def("bone_linear(Tensor x, Tensor weight, Tensor? bias, Tensor up, int r) -> (Tensor out, Tensor hidden)");
  // output_mask selects (x, weight, bias, up); x is read only for grad_weight.
  m.def(
      "bone_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor up, Tensor hidden, int r, "
      "bool[4] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_up)");

  // MiSS "bat" (Weight Guide): y = x W'^T + bias with, for every r x r block,
  // W'_ij = W_ij (I + block_i) + block_i (i the output block). W' is rebuilt per
  // call; backward never materialises the out x in weight gradient.
  m.def("bone_bat_linear(Tensor x, Tensor weight, Tensor? bias, Tensor block) -> Tensor");
  // output_mask selects (x, weight, bias, block); band_elements bounds the slice of
  // the weight gradient formed at once (the default is the one autograd uses).
  m.def(
      "bone_bat_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor block, "
      "bool[4] output_mask, int band_elements=16777216) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_block)");
  m.def("bone_bat_weight(Tensor weight, Tensor block) -> Tensor");
}

TORCH_LIBRARY_IMPL(peftcore, AutocastCPU, m) {
  impl_autocast<kCPU, kBoneLinear, BoneLinearSig>(m);
  impl_autocast<kCPU, kBoneBatLinear, BoneBatLinearSig>(m);
}
TORCH_LIBRARY_IMPL(peftcore, AutocastCUDA, m) {
  impl_autocast<kCUDA, kBoneLinear, BoneLinearSig>(m);
  impl_autocast<kCUDA, kBoneBatLinear, BoneBatLinearSig>(m);
}

// Every peftcore schema, in one place. Backends register kernels with
// TORCH_LIBRARY_IMPL in csrc/<family>/<family>_{cpu,cuda}, the adapter ops'
// autograd in csrc/common/adapter_autograd.cpp; fake (meta) kernels are
// registered from python/peftcore/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(peftcore, m) {
  // y = x W^T + b + scaling * (dropout(x) A^T) B^T, plus the saved N x r
  // lora_hidden = scaling / (1 - p) * (mask ∘ x) A^T that backward reuses.
  m.def(
      "lora_linear(Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, Tensor lora_B, "
      "float scaling, float dropout_p, Tensor? dropout_seed) -> (Tensor out, Tensor lora_hidden)");
  // output_mask selects (grad_x, grad_weight, grad_bias, grad_A, grad_B); the
  // gradients not asked for come back as empty tensors.
  m.def(
      "lora_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor lora_A, "
      "Tensor lora_B, Tensor lora_hidden, float scaling, float dropout_p, Tensor? dropout_seed, "
      "bool[5] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias, "
      "Tensor grad_A, Tensor grad_B)");

  // Per-tensor sums of squares (float64 accumulation on CPU, deterministic).
  m.def("multi_tensor_sumsq(Tensor[] tensors) -> Tensor");
  // One fused LAMB step over all tensors of a parameter group (see reference.py):
  // grads are divided by grad_divisor (global clipping, loss scale), the step is
  // skipped when found_inf is non-zero, and model_params (when given) receive a
  // copy of the float32 master params.
  m.def(
      "lamb_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] model_params, Tensor lr, Tensor step, "
      "Tensor grad_divisor, Tensor? found_inf, float beta1, float beta2, float eps, "
      "float weight_decay, bool bias_correction, bool grad_averaging, bool adapt, "
      "bool trust_clip, float phi_min, float phi_max, float min_trust) -> ()");
  // One fused LARS step (SGD with momentum and a layer-wise trust ratio);
  // fresh[i] marks a momentum buffer that starts from this step's update.
  m.def(
      "lars_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor(c!)[] model_params, Tensor lr, Tensor grad_divisor, Tensor? found_inf, bool[] fresh, "
      "float momentum, float dampening, float weight_decay, bool nesterov, float trust_coeff, "
      "float eps, bool trust_clip, bool adapt) -> ()");

  // Composable sparse fine-tuning, for many parameters in one call: entry j adds
  // weights[j] * values[j] at the sorted, unique flat (row-major) indices[j] of
  // params[owner[j]]. Each parameter gets one merged pass; the union of its indices
  // and the original values there are returned, so that sparse_revert_ restores
  // the exact original bits.
  m.def(
      "sparse_compose_(Tensor(a!)[] params, Tensor[] indices, Tensor[] values, int[] owner, "
      "float[] weights) -> (Tensor[] indices, Tensor[] originals)");
  m.def("sparse_revert_(Tensor(a!)[] params, Tensor[] indices, Tensor[] originals) -> ()");
  // The same union and weighted sums without touching the parameters (params are
  // read for shapes only): several deltas combined into one, on any device.
  m.def(
      "sparse_merge(Tensor[] params, Tensor[] indices, Tensor[] values, int[] owner, "
      "float[] weights) -> (Tensor[] indices, Tensor[] values)");
  // LT-SFT mask selection: per pair, the sorted flat indices of the k largest
  // |float(theta) - float(theta0)| over all pairs; ties at the k-th value are taken
  // in pair order, then flat index order. Non-finite differences raise ValueError.
  // CPU kernel only: on a GPU, sparse.select uses chunked torch.topk instead.
  m.def("magnitude_topk(Tensor[] theta0, Tensor[] theta, int k) -> Tensor[]");

  // Hydra: h = x W^T + b; y = h + s_p (drop(x) A_p^T) B_p^T + s_s (drop(h) A_s^T) B_s^T.
  // Either branch may be absent (its A and B None). Saved for backward: x, h and
  // the two N x r hiddens; the masks of x and h come from dropout_seed (h's from
  // the seed's second stream).
  m.def(
      "hydra_linear(Tensor x, Tensor weight, Tensor? bias, Tensor? A_p, Tensor? B_p, Tensor? A_s, "
      "Tensor? B_s, float scale_p, float scale_s, float dropout_p, Tensor? dropout_seed) -> "
      "(Tensor out, Tensor h, Tensor hidden_p, Tensor hidden_s)");
  // h (the base output, [N, out]) is returned, and read by backward, only with dropout:
  // without it backward rewrites T_s^T h as (T_s^T x) W^T + colsum(T_s) b^T, so h is
  // empty ([0]) and costs neither memory nor a copy.
  // output_mask selects (x, weight, bias, A_p, B_p, A_s, B_s).
  m.def(
      "hydra_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor h, Tensor? A_p, "
      "Tensor? B_p, Tensor? A_s, Tensor? B_s, Tensor hidden_p, Tensor hidden_s, float scale_p, "
      "float scale_s, float dropout_p, Tensor? dropout_seed, bool[7] output_mask) -> (Tensor grad_x, "
      "Tensor grad_weight, Tensor grad_bias, Tensor grad_A_p, Tensor grad_B_p, Tensor grad_A_s, "
      "Tensor grad_B_s)");

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
}

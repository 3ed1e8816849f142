// The optimizer ops: schemas. Kernels: lamb_{cpu,cuda}, lars_{cpu,cuda},
// sumsq_{cpu,cuda}; fakes: python/peftcore/ops/optim.py; the optimizers that call
// them: python/peftcore/optim/. No autograd (they mutate tensors under no_grad) and
// no autocast rule (they take the dtypes they are given).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(peftcore, m) {
  // Per-tensor sums of squares (float64 accumulation on CPU, deterministic).
  m.def("multi_tensor_sumsq(Tensor[] tensors) -> Tensor");
  // One fused LAMB step over all tensors of a parameter group (see python/peftcore/reference/optim.py):
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
}

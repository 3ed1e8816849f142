"""Fake kernels of the optimizer ops (schemas: csrc/optim/optim_schema.cpp; the optimizers
that call them: peftcore.optim)."""

from __future__ import annotations

import torch

from . import _common  # noqa: F401  (loads the library that defines the ops)


@torch.library.register_fake("peftcore::multi_tensor_sumsq")
def _multi_tensor_sumsq_fake(tensors):
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    device = tensors[0].device if tensors else torch.device("cpu")
    return torch.empty((len(tensors),), dtype=dtype, device=device)


@torch.library.register_fake("peftcore::lamb_step_")
def _lamb_step_fake(params, grads, exp_avgs, exp_avg_sqs, model_params, lr, step, grad_divisor,
                    found_inf, *args):
    return None


@torch.library.register_fake("peftcore::lars_step_")
def _lars_step_fake(params, grads, momentum_buffers, model_params, lr, grad_divisor, found_inf,
                    fresh, *args):
    return None

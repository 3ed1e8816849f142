"""Typed wrappers over torch.ops.peftcore: fake kernels, RNG seeds, double-backward errors.

Every op's schema lives in csrc/registration.cpp. This module adds, per op, what
the compiler needs: a fake (meta) kernel that computes output shapes. The adapter
ops' autograd formulas are C++ (csrc/common/adapter_autograd.cpp) and call the
backward ops, so that the whole graph stays inside registered ops under torch.compile.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import _native  # noqa: F401  (loads the library that defines torch.ops.peftcore)

_ops = torch.ops.peftcore


def dropout_seed(device: torch.device) -> Tensor:
    """Two random int64 words from torch's generator: the key of one dropout mask.

    Drawn with torch.randint so torch.manual_seed reproduces masks and
    torch.compile traces it as an ordinary random op.
    """
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device)


# ---------------------------------------------------------------------------- LoRA


def lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = True,
) -> Tensor:
    """``x W^T + b + scaling * (dropout(x) A^T) B^T`` in one fused op.

    x: [..., in]; weight: [out, in]; bias: [out] or None; lora_A: [r, in];
    lora_B: [out, r]. Dropout (probability ``dropout_p``, only when ``training``)
    applies to the input of A, as in HF PEFT; its mask is regenerated in backward
    from a seed, so only x (in its own dtype) and an N x r tensor are saved.
    """
    p = float(dropout_p) if training else 0.0
    seed = dropout_seed(x.device) if p > 0.0 else None
    out, _ = _ops.lora_linear(x, weight, bias, lora_A, lora_B, float(scaling), p, seed)
    return out


@torch.library.register_fake("peftcore::lora_linear")
def _lora_linear_fake(x, weight, bias, lora_A, lora_B, scaling, dropout_p, dropout_seed):
    torch._check(x.dim() >= 1, lambda: f"lora_linear: x must be [..., in_features], got {x.shape}")
    torch._check(
        x.shape[-1] == weight.shape[1],
        lambda: f"lora_linear: x {tuple(x.shape)} does not match weight {tuple(weight.shape)}",
    )
    rows = math.prod(x.shape[:-1])
    out = x.new_empty((*x.shape[:-1], weight.shape[0]))
    hidden = x.new_empty((rows, lora_A.shape[0]))
    return out, hidden


@torch.library.register_fake("peftcore::lora_linear_backward")
def _lora_linear_backward_fake(
    grad_out, x, weight, lora_A, lora_B, lora_hidden, scaling, dropout_p, dropout_seed, output_mask
):
    def grad(flag: bool, shape) -> Tensor:
        return x.new_empty(shape if flag else (0,))

    return (
        grad(output_mask[0], x.shape),
        grad(output_mask[1], weight.shape),
        grad(output_mask[2], (weight.shape[0],)),
        grad(output_mask[3], lora_A.shape),
        grad(output_mask[4], lora_B.shape),
    )


def _no_double_backward(op_name: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op_name} does not support double backward (create_graph=True through a peftcore "
            "adapter); compute higher-order gradients with peftcore.reference instead"
        )

    return backward


def _refuse_double_backward(backward_op: str) -> None:
    torch.library.register_autograd(backward_op, _no_double_backward(backward_op),
                                    setup_context=lambda ctx, inputs, output: None)


# The adapter ops' autograd formulas are C++ (csrc/common/adapter_autograd.cpp: a
# training step then never enters Python for them); their backward ops refuse
# double backward from here.
_refuse_double_backward("peftcore::lora_linear_backward")


# ---------------------------------------------------------------------------- optimizers


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


# ---------------------------------------------------------------------------- sparse


@torch.library.register_fake("peftcore::sparse_compose_")
def _sparse_compose_fake(params, indices, values, owner, weights):
    ctx = torch.library.get_ctx()
    sizes = [ctx.new_dynamic_size() for _ in params]  # the union of each parameter's indices
    return ([p.new_empty((n,), dtype=torch.int64) for p, n in zip(params, sizes)],
            [p.new_empty((n,)) for p, n in zip(params, sizes)])


@torch.library.register_fake("peftcore::sparse_merge")
def _sparse_merge_fake(params, indices, values, owner, weights):
    ctx = torch.library.get_ctx()
    acc = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    sizes = [ctx.new_dynamic_size() for _ in params]
    return ([p.new_empty((n,), dtype=torch.int64) for p, n in zip(params, sizes)],
            [p.new_empty((n,), dtype=acc) for p, n in zip(params, sizes)])


@torch.library.register_fake("peftcore::magnitude_topk")
def _magnitude_topk_fake(theta0, theta, k):
    ctx = torch.library.get_ctx()
    return [t.new_empty((ctx.new_dynamic_size(),), dtype=torch.int64) for t in theta]


@torch.library.register_fake("peftcore::sparse_revert_")
def _sparse_revert_fake(params, indices, originals):
    return None


# ---------------------------------------------------------------------------- Hydra


def hydra_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], A_p: Optional[Tensor],
                 B_p: Optional[Tensor], A_s: Optional[Tensor], B_s: Optional[Tensor], scale_p: float,
                 scale_s: float, dropout_p: float = 0.0, training: bool = True) -> Tensor:
    """``h + s_p (drop(x) A_p^T) B_p^T + s_s (drop(h) A_s^T) B_s^T`` with ``h = x W^T + b``,
    in one fused op; a branch whose A and B are None is skipped."""
    p = float(dropout_p) if training else 0.0
    seed = dropout_seed(x.device) if p > 0.0 else None
    out, *_ = _ops.hydra_linear(x, weight, bias, A_p, B_p, A_s, B_s, float(scale_p), float(scale_s), p, seed)
    return out


@torch.library.register_fake("peftcore::hydra_linear")
def _hydra_linear_fake(x, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s, dropout_p, dropout_seed):
    rows = math.prod(x.shape[:-1])
    out = x.new_empty((*x.shape[:-1], weight.shape[0]))
    h = x.new_empty((rows, weight.shape[0]) if dropout_p > 0 else (0,))  # only dropout needs h
    hidden_p = x.new_empty((rows, A_p.shape[0] if A_p is not None else 0))
    hidden_s = x.new_empty((rows, A_s.shape[0] if A_s is not None else 0))
    return out, h, hidden_p, hidden_s


@torch.library.register_fake("peftcore::hydra_linear_backward")
def _hydra_linear_backward_fake(grad_out, x, weight, bias, h, A_p, B_p, A_s, B_s, hidden_p, hidden_s, scale_p,
                                scale_s, dropout_p, dropout_seed, output_mask):
    def grad(flag, t, shape=None) -> Tensor:
        return x.new_empty((shape if shape is not None else t.shape) if flag and (t is not None or shape) else (0,))

    return (grad(output_mask[0], x), grad(output_mask[1], weight), grad(output_mask[2], None, (weight.shape[0],)),
            grad(output_mask[3], A_p), grad(output_mask[4], B_p), grad(output_mask[5], A_s),
            grad(output_mask[6], B_s))


_refuse_double_backward("peftcore::hydra_linear_backward")


# ---------------------------------------------------------------------------- MiSS bat


@torch.library.register_fake("peftcore::bone_bat_linear")
def _bone_bat_linear_fake(x, weight, bias, block):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake("peftcore::bone_bat_weight")
def _bone_bat_weight_fake(weight, block):
    return weight.new_empty(weight.shape)


@torch.library.register_fake("peftcore::bone_bat_linear_backward")
def _bone_bat_linear_backward_fake(grad_out, x, weight, block, output_mask, band_elements=1 << 24):
    shapes = (x.shape, weight.shape, (weight.shape[0],), block.shape)
    return tuple(x.new_empty(s if m else (0,)) for s, m in zip(shapes, output_mask))


_refuse_double_backward("peftcore::bone_bat_linear_backward")


# ---------------------------------------------------------------------------- MiSS bone / mini


@torch.library.register_fake("peftcore::bone_linear")
def _bone_linear_fake(x, weight, bias, up, r):
    return x.new_empty((*x.shape[:-1], weight.shape[0])), x.new_empty((math.prod(x.shape[:-1]), r))


@torch.library.register_fake("peftcore::bone_linear_backward")
def _bone_linear_backward_fake(grad_out, x, weight, up, hidden, r, output_mask):
    shapes = (x.shape, weight.shape, (weight.shape[0],), up.shape)
    return tuple(x.new_empty(s if m else (0,)) for s, m in zip(shapes, output_mask))


_refuse_double_backward("peftcore::bone_linear_backward")


def bone_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], up: Tensor, r: int) -> Tensor:
    """MiSS bone/mini without dropout: ``x W^T + b + blocksum_r(x) up^T`` (up [out, r])."""
    out, _ = _ops.bone_linear(x, weight, bias, up, int(r))
    return out


def bone_bat_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], block: Tensor) -> Tensor:
    """MiSS bat: ``x W'^T + b`` with ``W'_ij = W_ij (I + block_i) + block_i``."""
    return _ops.bone_bat_linear(x, weight, bias, block)


def bone_bat_weight(weight: Tensor, block: Tensor) -> Tensor:
    """The bat-transformed weight W' (no autograd; used by merge)."""
    return _ops.bone_bat_weight(weight, block)

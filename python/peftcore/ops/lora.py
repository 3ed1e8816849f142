"""lora_linear: the typed wrapper and the fake kernels (schemas: csrc/lora/lora_schema.cpp)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._common import (check_devices_dtypes, check_linear_input, check_shape, dropout_seed, peftcore_ops,
                      refuse_double_backward)


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
    out, _ = peftcore_ops.lora_linear(x, weight, bias, lora_A, lora_B, float(scaling), p, seed)
    return out


@torch.library.register_fake("peftcore::lora_linear")
def _lora_linear_fake(x, weight, bias, lora_A, lora_B, scaling, dropout_p, dropout_seed):
    op = "lora_linear"
    check_devices_dtypes(op, x, weight=weight, bias=bias, lora_A=lora_A, lora_B=lora_B)
    check_linear_input(op, x, weight, bias)
    check_shape(op, "lora_A", lora_A, (lora_A.shape[0], weight.shape[1]), "[r, in_features]")
    check_shape(op, "lora_B", lora_B, (weight.shape[0], lora_A.shape[0]), "[out_features, r]")
    rows = math.prod(x.shape[:-1])
    out = x.new_empty((*x.shape[:-1], weight.shape[0]))
    hidden = x.new_empty((rows, lora_A.shape[0]))
    return out, hidden


@torch.library.register_fake("peftcore::lora_linear_backward")
def _lora_linear_backward_fake(
    grad_out, x, weight, lora_A, lora_B, lora_hidden, scaling, dropout_p, dropout_seed, output_mask
):
    check_devices_dtypes("lora_linear_backward", x, grad_out=grad_out, weight=weight, lora_A=lora_A, lora_B=lora_B,
                         lora_hidden=lora_hidden)

    def grad(flag: bool, shape) -> Tensor:
        return x.new_empty(shape if flag else (0,))

    return (
        grad(output_mask[0], x.shape),
        grad(output_mask[1], weight.shape),
        grad(output_mask[2], (weight.shape[0],)),
        grad(output_mask[3], lora_A.shape),
        grad(output_mask[4], lora_B.shape),
    )


refuse_double_backward("peftcore::lora_linear_backward")

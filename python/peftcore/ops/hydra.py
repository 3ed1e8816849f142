"""hydra_linear: the typed wrapper and the fake kernels (schemas: csrc/hydra/hydra_schema.cpp)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._common import (check_devices_dtypes, check_linear_input, check_shape, dropout_seed, peftcore_ops,
                      refuse_double_backward)


def hydra_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], A_p: Optional[Tensor],
                 B_p: Optional[Tensor], A_s: Optional[Tensor], B_s: Optional[Tensor], scale_p: float,
                 scale_s: float, dropout_p: float = 0.0, training: bool = True) -> Tensor:
    """``h + s_p (drop(x) A_p^T) B_p^T + s_s (drop(h) A_s^T) B_s^T`` with ``h = x W^T + b``,
    in one fused op; a branch whose A and B are None is skipped."""
    p = float(dropout_p) if training else 0.0
    seed = dropout_seed(x.device) if p > 0.0 else None
    out, *_ = peftcore_ops.hydra_linear(x, weight, bias, A_p, B_p, A_s, B_s, float(scale_p), float(scale_s), p, seed)
    return out


@torch.library.register_fake("peftcore::hydra_linear")
def _hydra_linear_fake(x, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s, dropout_p, dropout_seed):
    op = "hydra_linear"
    check_devices_dtypes(op, x, weight=weight, bias=bias, A_p=A_p, B_p=B_p, A_s=A_s, B_s=B_s)
    check_linear_input(op, x, weight, bias)
    branches = (("p", A_p, B_p, weight.shape[1], "in_features"), ("s", A_s, B_s, weight.shape[0], "out_features"))
    for branch, a, b, k, k_name in branches:
        if (a is None) != (b is None):
            raise RuntimeError(f"{op}: A_{branch} and B_{branch} must both be given or both be None")
        if a is not None:
            check_shape(op, f"A_{branch}", a, (a.shape[0], k), f"[r_{branch}, {k_name}]")
            check_shape(op, f"B_{branch}", b, (weight.shape[0], a.shape[0]), f"[out_features, r_{branch}]")
    rows = math.prod(x.shape[:-1])
    out = x.new_empty((*x.shape[:-1], weight.shape[0]))
    h = x.new_empty((rows, weight.shape[0]) if dropout_p > 0 else (0,))  # only dropout needs h
    hidden_p = x.new_empty((rows, A_p.shape[0] if A_p is not None else 0))
    hidden_s = x.new_empty((rows, A_s.shape[0] if A_s is not None else 0))
    return out, h, hidden_p, hidden_s


@torch.library.register_fake("peftcore::hydra_linear_backward")
def _hydra_linear_backward_fake(grad_out, x, weight, bias, h, A_p, B_p, A_s, B_s, hidden_p, hidden_s, scale_p,
                                scale_s, dropout_p, dropout_seed, output_mask):
    check_devices_dtypes("hydra_linear_backward", x, grad_out=grad_out, weight=weight, bias=bias, A_p=A_p, B_p=B_p,
                         A_s=A_s, B_s=B_s)

    def grad(flag, t, shape=None) -> Tensor:
        return x.new_empty((shape if shape is not None else t.shape) if flag and (t is not None or shape) else (0,))

    return (grad(output_mask[0], x), grad(output_mask[1], weight), grad(output_mask[2], None, (weight.shape[0],)),
            grad(output_mask[3], A_p), grad(output_mask[4], B_p), grad(output_mask[5], A_s),
            grad(output_mask[6], B_s))


refuse_double_backward("peftcore::hydra_linear_backward")

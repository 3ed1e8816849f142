"""The MiSS ops (bone / mini block sums, bat): typed wrappers and fake kernels
(schemas: csrc/bone/bone_schema.cpp)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._common import check_devices_dtypes, check_linear_input, check_shape, peftcore_ops, refuse_double_backward


def _check_bat(op, x, weight, bias, block):
    check_devices_dtypes(op, x, weight=weight, bias=bias, block=block)
    check_linear_input(op, x, weight, bias)
    r = block.shape[-1]
    torch._check(block.dim() == 3, lambda: f"{op}: block must have 3 dimensions, got {list(block.shape)}")
    torch._check(weight.shape[0] % r == 0 and weight.shape[1] % r == 0,
                 lambda: f"{op}: the bat form needs in_features and out_features divisible by the block size r={r}")
    check_shape(op, "block", block, (weight.shape[0] // r, r, r), "[out_features / r, r, r]")


@torch.library.register_fake("peftcore::bone_bat_linear")
def _bone_bat_linear_fake(x, weight, bias, block):
    _check_bat("bone_bat_linear", x, weight, bias, block)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake("peftcore::bone_bat_weight")
def _bone_bat_weight_fake(weight, block):
    _check_bat("bone_bat_weight", weight.new_empty((0, weight.shape[1])), weight, None, block)
    return weight.new_empty(weight.shape)


@torch.library.register_fake("peftcore::bone_bat_linear_backward")
def _bone_bat_linear_backward_fake(grad_out, x, weight, block, output_mask, band_elements=1 << 24):
    check_devices_dtypes("bone_bat_linear_backward", x, grad_out=grad_out)
    _check_bat("bone_bat_linear_backward", x, weight, None, block)
    shapes = (x.shape, weight.shape, (weight.shape[0],), block.shape)
    return tuple(x.new_empty(s if m else (0,)) for s, m in zip(shapes, output_mask))


refuse_double_backward("peftcore::bone_bat_linear_backward")


@torch.library.register_fake("peftcore::bone_linear")
def _bone_linear_fake(x, weight, bias, up, r):
    op = "bone_linear"
    check_devices_dtypes(op, x, weight=weight, bias=bias, up=up)
    check_linear_input(op, x, weight, bias)
    torch._check(1 <= r and r <= weight.shape[1], lambda: f"{op}: r must be in [1, in_features={weight.shape[1]}], got {r}")
    check_shape(op, "up", up, (weight.shape[0], r), "[out_features, r]")
    return x.new_empty((*x.shape[:-1], weight.shape[0])), x.new_empty((math.prod(x.shape[:-1]), r))


@torch.library.register_fake("peftcore::bone_linear_backward")
def _bone_linear_backward_fake(grad_out, x, weight, up, hidden, r, output_mask):
    check_devices_dtypes("bone_linear_backward", x, grad_out=grad_out, weight=weight, up=up, hidden=hidden)
    shapes = (x.shape, weight.shape, (weight.shape[0],), up.shape)
    return tuple(x.new_empty(s if m else (0,)) for s, m in zip(shapes, output_mask))


refuse_double_backward("peftcore::bone_linear_backward")


def bone_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], up: Tensor, r: int) -> Tensor:
    """MiSS bone/mini without dropout: ``x W^T + b + blocksum_r(x) up^T`` (up [out, r])."""
    out, _ = peftcore_ops.bone_linear(x, weight, bias, up, int(r))
    return out


def bone_bat_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], block: Tensor) -> Tensor:
    """MiSS bat: ``x W'^T + b`` with ``W'_ij = W_ij (I + block_i) + block_i``."""
    return peftcore_ops.bone_bat_linear(x, weight, bias, block)


def bone_bat_weight(weight: Tensor, block: Tensor) -> Tensor:
    """The bat-transformed weight W' (no autograd; used by merge)."""
    return peftcore_ops.bone_bat_weight(weight, block)

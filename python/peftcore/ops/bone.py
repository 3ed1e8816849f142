"""The MiSS ops (bone / mini block sums, bat): typed wrappers and fake kernels
(schemas: csrc/bone/bone_schema.cpp)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._common import peftcore_ops, refuse_double_backward


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


refuse_double_backward("peftcore::bone_bat_linear_backward")


@torch.library.register_fake("peftcore::bone_linear")
def _bone_linear_fake(x, weight, bias, up, r):
    return x.new_empty((*x.shape[:-1], weight.shape[0])), x.new_empty((math.prod(x.shape[:-1]), r))


@torch.library.register_fake("peftcore::bone_linear_backward")
def _bone_linear_backward_fake(grad_out, x, weight, up, hidden, r, output_mask):
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

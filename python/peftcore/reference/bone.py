"""Plain-PyTorch MiSS (bone, mini, bat): the oracle of the bone_* ops and of bat's merge."""

from __future__ import annotations

import torch
from torch import Tensor


def bat_weight(weight: Tensor, block: Tensor) -> Tensor:
    """W'_ij = W_ij (I + b_i) + b_i for every r x r block (i: output block, j: input block)."""
    r = block.shape[-1]
    out, n_in = weight.shape
    w = weight.reshape(out // r, r, n_in // r, r)  # [i, a, j, c]
    grown = torch.einsum("iajc,icd->iajd", w, block + torch.eye(r, dtype=block.dtype, device=block.device))
    return (grown + block[:, :, None, :]).reshape(out, n_in)


def bat_unmerge(merged: Tensor, block: Tensor) -> Tensor:
    """W_ij = (W'_ij - b_i)(I + b_i)^-1, the inverse of bat_weight."""
    r = block.shape[-1]
    out, n_in = merged.shape
    inv = torch.linalg.inv(block + torch.eye(r, dtype=block.dtype, device=block.device))
    w = merged.reshape(out // r, r, n_in // r, r) - block[:, :, None, :]
    return torch.einsum("iajc,icd->iajd", w, inv).reshape(out, n_in)


def bone_linear(x: Tensor, weight: Tensor, bias, up: Tensor, r: int) -> Tensor:
    """MiSS bone/mini: ``x W^T + b + blocksum_r(pad(x)) up^T`` (up [out, r]), as HF
    PEFT's MiSS forward pads x to a multiple of r and sums its r-wide chunks."""
    pad = (-x.shape[-1]) % r
    chunks = torch.nn.functional.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, r).sum(-2)
    return torch.nn.functional.linear(x, weight, bias) + chunks @ up.t()

"""BoneLinear: HF PEFT's MiSS / Bone block adapters ("bone" and "mini" forms)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops

VARIANTS = ("bone", "mini")


def block_sum_matrix(r: int, in_features: int, dtype, device) -> Tensor:
    """The fixed 0/1 [r, in] matrix of MiSS's block sum: entry (j, i) is 1 iff i % r == j,
    so ``x @ A^T`` sums the r-wide chunks of x zero-padded to a multiple of r."""
    a = torch.zeros(r, in_features, dtype=dtype, device=device)
    i = torch.arange(in_features, device=device)
    a[i % r, i] = 1
    return a


class BoneLinear(nn.Module):
    """MiSS (Bone) on an existing ``nn.Linear``, in HF PEFT's layout (``miss_block``):

    * ``bone`` (PEFT ``init_weights=True``): ``miss_block [r, out]``, zero-init;
      ``y = base(x) + blocksum_r(pad(drop(x))) @ miss_block``.
    * ``mini`` (``init_weights="mini"``): ``miss_block [r, mini_r]``, repeated
      ``out / mini_r`` times along the output dimension.

    Both are LoRA with a fixed block-sum A and B = the (tiled) block transposed,
    so they run on the fused LoRA op. ``merge`` adds the tiled block to every
    r-column block of W (the last partial block takes its first in % r columns).
    The ``bat`` form (a different op: W rebuilt per block) is not in this build.
    """

    def __init__(self, base: nn.Linear, r: int = 64, variant: str = "bone", mini_r: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"BoneLinear wraps an nn.Linear, got {type(base).__name__}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not isinstance(r, int) or r < 1 or r > base.in_features:
            raise ValueError(f"r must be an int in [1, in_features={base.in_features}], got {r!r}")
        if variant == "mini" and (mini_r < 1 or base.out_features % mini_r):
            raise ValueError(f"mini_r must be a positive divisor of out_features={base.out_features}, got {mini_r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base_layer = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.variant, self.mini_r, self.dropout_p = r, variant, mini_r, float(dropout)
        cols = self.out_features if variant == "bone" else mini_r
        w = base.weight
        self.miss_block = nn.Parameter(torch.zeros(r, cols, dtype=w.dtype, device=w.device))
        self.register_buffer("block_sum", block_sum_matrix(r, self.in_features, w.dtype, w.device),
                             persistent=False)
        self.merged = False

    def _up(self) -> Tensor:
        """B of the equivalent LoRA: [out, r]."""
        block = self.miss_block
        if self.variant == "mini":
            block = block.repeat(1, self.out_features // self.mini_r)
        return block.t()

    def delta_weight(self) -> Tensor:
        w = self.base_layer.weight
        compute = torch.promote_types(w.dtype, torch.float32)
        return (self._up().to(compute) @ self.block_sum.to(compute)).to(w.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.sub_(self.delta_weight())
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base_layer(x)
        w = self.base_layer.weight
        return ops.lora_linear(x, w, self.base_layer.bias, self.block_sum.to(w.dtype), self._up().to(w.dtype),
                               1.0, self.dropout_p, self.training)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"variant={self.variant}" + (f", mini_r={self.mini_r}" if self.variant == "mini" else ""))

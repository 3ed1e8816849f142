"""BoneLinear: HF PEFT's MiSS block adapters (forms "bone", "mini" and "bat")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops, reference
from .low_rank import as_compute, low_rank_delta

VARIANTS = ("bone", "mini", "bat")


def block_sum_matrix(r: int, in_features: int, dtype, device) -> Tensor:
    """The fixed 0/1 [r, in] matrix of MiSS's block sum: entry (j, i) is 1 iff i % r == j,
    so ``x @ A^T`` sums the r-wide chunks of x zero-padded to a multiple of r."""
    a = torch.zeros(r, in_features, dtype=dtype, device=device)
    i = torch.arange(in_features, device=device)
    a[i % r, i] = 1
    return a


class BoneLinear(nn.Module):
    """MiSS on an existing ``nn.Linear``, in HF PEFT's layout (``miss_block``).

    Names: the method is MiSS (HF PEFT's ``MissConfig``; it was called Bone before, and
    PEFT still reads Bone checkpoints). peftcore names the family ``bone`` everywhere
    in code (``BoneLinear``, ``BoneConfig``, the ``bone_*`` ops, ``csrc/bone/``) and
    keeps PEFT's names where they are PEFT's format: the parameter ``miss_block`` and
    the ``init_weights`` values. The three forms:

    * ``bone`` (PEFT ``init_weights=True``): ``miss_block [r, out]``, zero-init;
      ``y = base(x) + blocksum_r(pad(drop(x))) @ miss_block``.
    * ``mini`` (``init_weights="mini"``): ``miss_block [r, mini_r]``, repeated
      ``out / mini_r`` times along the output dimension.

    * ``bat`` (``init_weights="bat"``, Weight Guide): ``miss_block [out/r, r, r]``,
      zero-init; every r x r block of W becomes ``W_ij (I + b_i) + b_i``; needs in
      and out divisible by r. Runs on ``bone_bat_linear``, whose backward never
      forms the out x in weight gradient.

    ``bone`` and ``mini`` are LoRA with a fixed block-sum A and B = the (tiled)
    block transposed: without dropout they run on ``bone_linear`` (the block sum as
    a reduction), with dropout on the fused LoRA op; their ``merge`` adds the
    tiled block to every r-column block of W (the last partial block takes its
    first in % r columns). ``bat``'s merge writes W' and keeps W (one copy while
    merged), which unmerge restores bit for bit; if W' was changed in between, unmerge
    solves ``W_ij = (W'_ij - b_i)(I + b_i)^-1`` in float32 (float64 for float64 weights).
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
        if variant == "bat" and (base.in_features % r or base.out_features % r):
            raise ValueError(f"the bat form needs in_features ({base.in_features}) and out_features "
                             f"({base.out_features}) divisible by r={r}")
        if variant == "mini" and (mini_r < 1 or base.out_features % mini_r):
            raise ValueError(f"mini_r must be a positive divisor of out_features={base.out_features}, got {mini_r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base_layer = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.variant, self.mini_r, self.dropout_p = r, variant, mini_r, float(dropout)
        w = base.weight
        shape = {"bone": (r, self.out_features), "mini": (r, mini_r),
                 "bat": (self.out_features // r, r, r)}[variant]
        self.miss_block = nn.Parameter(torch.zeros(shape, dtype=w.dtype, device=w.device))
        if variant != "bat":
            self.register_buffer("block_sum", block_sum_matrix(r, self.in_features, w.dtype, w.device),
                                 persistent=False)
        self.merged = False
        self.active = True  # False: the layer runs its base alone (peftcore.set_adapter)

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
        if self.merged:
            return
        w = self.base_layer.weight
        if self.variant == "bat":
            # W' rounds to W's dtype and undoing it is a solve with (I + b): repeated
            # cycles would drift (in 16-bit visibly). The merge keeps W, one copy while
            # merged, and unmerge restores it exactly unless W' was changed since.
            self._unmerged = w.detach().clone()
            w.copy_(ops.bone_bat_weight(w, as_compute(self.miss_block, w)))
        else:
            w.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        if self.variant == "bat":
            kept, self._unmerged = getattr(self, "_unmerged", None), None
            same = kept is not None and kept.device == w.device and kept.dtype == w.dtype and kept.shape == w.shape
            if same and torch.equal(ops.bone_bat_weight(kept, as_compute(self.miss_block, w)), w):
                w.copy_(kept)
            else:  # W' changed since the merge (or a merged state was loaded): solve
                compute = torch.promote_types(w.dtype, torch.float32)
                w.copy_(reference.bat_unmerge(w.to(compute), self.miss_block.to(compute)))
        else:
            w.sub_(self.delta_weight())
        self.merged = False

    def low_rank(self):
        """(A, B, dropout p) of the equivalent LoRA for bone and mini; None for bat,
        which changes W itself."""
        if self.variant == "bat":
            return None
        return self.block_sum, self._up(), self.dropout_p

    def adapter_delta(self, x: Tensor, base_out: Tensor) -> Tensor:
        """What the adapter adds to ``base(x)`` (plain torch ops; for bat
        ``x (W' - W)^T``, whose difference is formed in float32 at least)."""
        w = self.base_layer.weight
        if self.variant != "bat":
            return low_rank_delta(x, *self.low_rank(), self.training)
        compute = torch.promote_types(w.dtype, torch.float32)
        diff = ops.bone_bat_weight(w.to(compute), self.miss_block.to(compute)) - w.to(compute)
        return nn.functional.linear(x, diff.to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or not self.active:
            return self.base_layer(x)
        w = self.base_layer.weight
        if self.variant == "bat":
            return ops.bone_bat_linear(x, w, self.base_layer.bias, as_compute(self.miss_block, w))
        if self.dropout_p == 0.0 or not self.training:  # the block sum as a reduction, not a GEMM
            return ops.bone_linear(x, w, self.base_layer.bias, as_compute(self._up(), w), self.r)
        return ops.lora_linear(x, w, self.base_layer.bias, as_compute(self.block_sum, w), as_compute(self._up(), w),
                               1.0, self.dropout_p, self.training)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"variant={self.variant}" + (f", mini_r={self.mini_r}" if self.variant == "mini" else ""))

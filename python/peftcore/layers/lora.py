"""LoraLinear: an nn.Linear with a LoRA adapter, computed by one fused op."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import ops
from .low_rank import as_compute, low_rank_delta


def _check_rank_and_dropout(r: int, dropout: float) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive int, got {r!r}")
    if not (0.0 <= float(dropout) < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


class LoraLinear(nn.Module):
    """Wraps an existing ``nn.Linear`` (shared and frozen) with a LoRA adapter.

    ``y = base(x) + scaling * lora_B(lora_A(dropout(x)))`` with
    ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), computed by
    ``torch.ops.peftcore.lora_linear``. Parameter names and shapes follow HF PEFT
    (``base_layer.weight``, ``lora_A.weight [r, in]``, ``lora_B.weight [out, r]``),
    and so does the initialisation: A kaiming-uniform (a = sqrt(5)), B zeros, so a
    fresh adapter leaves the output unchanged.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoraLinear wraps an nn.Linear, got {type(base).__name__}")
        _check_rank_and_dropout(r, dropout)
        self.base_layer = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.r = r
        self.lora_alpha = alpha
        self.use_rslora = use_rslora
        self.scaling = alpha / (math.sqrt(r) if use_rslora else r)
        self.dropout_p = float(dropout)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        self.merged = False
        self.active = True  # False: the layer runs its base alone (peftcore.set_adapter)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> Tensor:
        """``scaling * B A`` ([out, in]), computed in float32 at least, in the base weight's dtype."""
        weight = self.base_layer.weight
        compute = torch.promote_types(weight.dtype, torch.float32)
        delta = (self.lora_B.weight.to(compute) @ self.lora_A.weight.to(compute)) * self.scaling
        return delta.to(weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Folds the adapter into the base weight; forward then runs the base layer alone."""
        if self.merged:
            return
        self.base_layer.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undoes merge() (exact up to one rounding of the base weight's dtype)."""
        if not self.merged:
            return
        self.base_layer.weight.sub_(self.delta_weight())
        self.merged = False

    def low_rank(self) -> tuple[Tensor, Tensor, float]:
        """(A, scaling * B, dropout p): the adapter as ``(drop(x) A^T) B'^T``, for fusing
        several adapters of one layer into a single op."""
        return self.lora_A.weight, self.lora_B.weight * self.scaling, self.dropout_p

    def adapter_delta(self, x: Tensor, base_out: Tensor) -> Tensor:
        """What the adapter adds to ``base(x)`` (plain torch ops)."""
        return low_rank_delta(x, *self.low_rank(), self.training)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or not self.active:
            return self.base_layer(x)
        weight, bias = self.base_layer.weight, self.base_layer.bias
        lora_A, lora_B = as_compute(self.lora_A.weight, weight), as_compute(self.lora_B.weight, weight)
        return ops.lora_linear(
            x, weight, bias, lora_A, lora_B, self.scaling, self.dropout_p, self.training
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.lora_alpha}, dropout={self.dropout_p}, scaling={self.scaling:g}, "
            f"merged={self.merged}"
        )

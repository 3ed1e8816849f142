"""What the adapter layers share: the cast of adapter tensors to the base weight's
dtype, and the unfused form of a low-rank term, for combining several adapters."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn


def as_compute(t: Optional[Tensor], weight: Tensor) -> Optional[Tensor]:
    """An adapter tensor in the base weight's dtype (adapters may be kept in float32 on a
    16-bit base; autocast then casts both alike). A non-floating adapter tensor (int8,
    bool) is an error, not a silent cast."""
    if t is None:
        return None
    if not t.is_floating_point():
        raise TypeError(f"adapter tensors must be floating point, got {t.dtype} (shape {tuple(t.shape)})")
    return t.to(weight.dtype)


def low_rank_delta(x: Tensor, A: Tensor, B: Tensor, p: float, training: bool) -> Tensor:
    """``(drop(x) A^T) B^T`` with plain torch ops (its own dropout draw)."""
    h = nn.functional.linear(nn.functional.dropout(x, p, training) if p else x, A.to(x.dtype))
    return nn.functional.linear(h, B.to(x.dtype))

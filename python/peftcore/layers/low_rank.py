"""The unfused form of a low-rank adapter term, for combining several adapters."""

from __future__ import annotations

from torch import Tensor, nn


def low_rank_delta(x: Tensor, A: Tensor, B: Tensor, p: float, training: bool) -> Tensor:
    """``(drop(x) A^T) B^T`` with plain torch ops (its own dropout draw)."""
    h = nn.functional.linear(nn.functional.dropout(x, p, training) if p else x, A.to(x.dtype))
    return nn.functional.linear(h, B.to(x.dtype))

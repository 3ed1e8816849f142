"""Exact top-k selection of |theta - theta0| over many tensors, without
concatenating them: a radix select on the float32 bit patterns of the
magnitudes (non-negative floats order like their bits), 16 bits per round: two
histogram rounds and one selection pass, each over one parameter at a time."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor


def _magnitude_bits(pair: tuple[Tensor, Tensor], check: bool = False) -> Tensor:
    """int32 bit patterns of |theta - theta0| (float32), flat; one parameter at a time."""
    t0, t = pair
    d = (t.detach().to(torch.float32) - t0.detach().to(torch.float32)).abs_().flatten()
    if check and not bool(torch.isfinite(d).all()):
        raise ValueError("from_diff: theta - theta0 has non-finite values")
    return d.view(torch.int32)


def select_top_k(pairs: Mapping[str, tuple[Tensor, Tensor]], k: int) -> dict[str, Tensor]:
    """Flat indices (sorted int64) of the k largest |theta - theta0| over all pairs:
    everything above the k-th largest magnitude, then ties in the pairs' order."""
    total = sum(p[0].numel() for p in pairs.values())
    if k <= 0 or total == 0:
        return {n: torch.zeros(0, dtype=torch.int64, device=p[0].device) for n, p in pairs.items()}
    k = min(k, total)
    prefix, remaining = 0, k
    for shift in (16, 0):  # the high 16 bits, then the low 16 of the candidates left
        hist = None
        for pair in pairs.values():
            bits = _magnitude_bits(pair, check=shift == 16)
            if shift == 0:
                bits = bits[(bits >> 16) == prefix]
            h = torch.bincount((bits >> shift) & 0xFFFF, minlength=1 << 16)
            hist = h if hist is None else hist + h
        hist = hist.cpu()
        from_top = hist.flip(0).cumsum(0)
        b = int(torch.nonzero(from_top >= remaining)[0])
        bucket = (1 << 16) - 1 - b
        remaining -= int(from_top[b] - hist[bucket])  # drop what lies strictly above the bucket
        prefix = (prefix << 16) | bucket
    threshold, ties_left = prefix, remaining  # the k-th largest bit pattern; ties still to take
    chosen = {}
    for name, pair in pairs.items():
        bits = _magnitude_bits(pair)
        above = torch.nonzero(bits > threshold).flatten()
        ties = torch.nonzero(bits == threshold).flatten()[:ties_left]
        ties_left -= ties.numel()
        chosen[name] = torch.sort(torch.cat([above, ties])).values
    return chosen

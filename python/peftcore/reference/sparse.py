"""Plain-PyTorch sparse composition and LT-SFT selection: the oracle of the sparse ops."""

from __future__ import annotations

import torch
from torch import Tensor


def sparse_compose(param: Tensor, indices: list[Tensor], values: list[Tensor],
                   weights: list[float]) -> Tensor:
    """Dense oracle of sparse_compose_: param + sum_i w_i * scatter(indices_i, values_i),
    summed in float32 (float64 for float64 params) and rounded once to param's dtype."""
    acc = torch.float64 if param.dtype == torch.float64 else torch.float32
    delta = torch.zeros(param.numel(), dtype=acc, device=param.device)
    for idx, val, w in zip(indices, values, weights):
        delta.index_add_(0, idx, val.to(acc) * w)
    touched = torch.zeros(param.numel(), dtype=torch.bool, device=param.device)
    for idx in indices:
        touched[idx] = True
    out = param.detach().flatten().clone()
    out[touched] = (out[touched].to(acc) + delta[touched]).to(param.dtype)
    return out.view(param.shape)


def magnitude_top_k(theta0: list[Tensor], theta: list[Tensor], k: int) -> list[Tensor]:
    """Oracle of magnitude_topk (LT-SFT selection): per pair, the sorted flat indices of
    the k largest |float(theta) - float(theta0)| over all pairs, ties at the k-th value
    taken in pair order, then flat index order. A stable descending sort of the
    concatenated magnitudes keeps exactly that order among equal values."""
    mags = torch.cat([(t.detach().float() - t0.detach().float()).abs().flatten() for t0, t in zip(theta0, theta)])
    order = torch.sort(mags, descending=True, stable=True).indices[:k]
    chosen = torch.sort(order).values
    out, start = [], 0
    for t in theta:
        n = t.numel()
        out.append(chosen[(chosen >= start) & (chosen < start + n)] - start)
        start += n
    return out

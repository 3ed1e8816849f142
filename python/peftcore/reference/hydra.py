"""Plain-PyTorch Hydra: the oracle of torch.ops.peftcore.hydra_linear and of Hydra's merge."""

from __future__ import annotations

import torch

from .dropout import dropout_keep_mask


def hydra_linear(x, weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s, dropout_p=0.0, dropout_seed=None):
    """h = x W^T + b; y = h + s_p (drop(x) A_p^T) B_p^T + s_s (drop(h) A_s^T) B_s^T.
    The mask of h uses the seed with its first word plus one."""
    h = torch.nn.functional.linear(x, weight, bias)
    y = h
    xd, hd = x, h
    if dropout_p > 0.0:
        rows = x.numel() // x.shape[-1]
        keep_x = dropout_keep_mask(dropout_seed, dropout_p, rows, x.shape[-1]).to(x.device)
        seed_h = dropout_seed.clone()
        seed_h[0] += 1
        keep_h = dropout_keep_mask(seed_h, dropout_p, rows, h.shape[-1]).to(x.device)
        xd = x * keep_x.reshape(x.shape).to(x.dtype) / (1.0 - dropout_p)
        hd = h * keep_h.reshape(h.shape).to(h.dtype) / (1.0 - dropout_p)
    if A_p is not None:
        y = y + scale_p * ((xd @ A_p.t()) @ B_p.t())
    if A_s is not None:
        y = y + scale_s * ((hd @ A_s.t()) @ B_s.t())
    return y


def hydra_merged_weight(weight, bias, A_p, B_p, A_s, B_s, scale_p, scale_s):
    """Without dropout Hydra is one linear map: W' = W + s_p B_p A_p + s_s B_s A_s W,
    b' = b + s_s B_s A_s b."""
    w, b = weight.clone(), None if bias is None else bias.clone()
    if A_s is not None:
        S = scale_s * (B_s @ A_s)
        w = w + S @ weight
        b = None if bias is None else b + S @ bias
    if A_p is not None:
        w = w + scale_p * (B_p @ A_p)
    return w, b

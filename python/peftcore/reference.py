"""Plain-PyTorch versions of every peftcore op: the test oracle and the readable math.

Nothing here is fast. Each function states the exact semantics the fused
kernels implement, including how dropout masks derive from their seed, so tests
can compare bit patterns of masks and values against the compiled ops.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _mulhilo32(a: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """(lo, hi) 32-bit halves of a * b for uint32 values held in int64, without overflow."""
    p0 = (a & 0xFFFF) * b  # < 2**48
    p1 = (a >> 16) * b  # < 2**48
    low_sum = p0 + ((p1 & 0xFFFF) << 16)  # < 2**49
    return low_sum & _M32, ((p1 >> 16) + (low_sum >> 32)) & _M32


def philox4x32_10(group: Tensor, stream: int, key: int) -> list[Tensor]:
    """Philox4x32-10 (Salmon et al. 2011) on counters (group, stream) with a 64-bit key.

    group: int64 tensor of non-negative counter values; stream, key: uint64 as Python ints.
    Returns the four uint32 output words (as int64 tensors).
    """
    c = [group & _M32, (group >> 32) & _M32]
    c += [torch.full_like(group, stream & _M32), torch.full_like(group, (stream >> 32) & _M32)]
    k0, k1 = key & _M32, (key >> 32) & _M32
    for _ in range(10):
        lo0, hi0 = _mulhilo32(c[0], _PHILOX_M[0])
        lo1, hi1 = _mulhilo32(c[2], _PHILOX_M[1])
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
    return c


def dropout_keep_mask(seed: Tensor, p: float, rows: int, cols: int) -> Tensor:
    """The keep-mask peftcore's kernels regenerate for a [rows, cols] input.

    Element i (flat row-major) takes the 16-bit half i % 2 (low half first) of word
    (i // 2) % 4 of Philox(counter=(i // 8, seed[1]), key=seed[0]) and is kept when
    that half is >= ceil(p * 2**16), i.e. with probability 1 - p up to 2**-16. Kept
    values are later scaled by 1 / (1 - p).
    """
    words = [int(w) & 0xFFFFFFFFFFFFFFFF for w in seed.cpu().tolist()]
    flat = torch.arange(rows * cols, dtype=torch.int64)
    r = philox4x32_10(flat >> 3, stream=words[1], key=words[0])
    lane = (flat >> 1) & 3
    word = torch.where(lane == 0, r[0], torch.where(lane == 1, r[1], torch.where(lane == 2, r[2], r[3])))
    half = (word >> (16 * (flat & 1))) & 0xFFFF
    threshold = int(-(-p * 2**16 // 1))  # ceil
    return (half >= threshold).reshape(rows, cols)


def lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    dropout_seed: Optional[Tensor] = None,
) -> Tensor:
    """y = x W^T + b + scaling * (dropout(x) A^T) B^T (HF PEFT's LoRA forward)."""
    y = torch.nn.functional.linear(x, weight, bias)
    xd = x
    if dropout_p > 0.0:
        rows = x.numel() // x.shape[-1]
        keep = dropout_keep_mask(dropout_seed, dropout_p, rows, x.shape[-1]).to(x.device)
        xd = x * keep.reshape(x.shape).to(x.dtype) / (1.0 - dropout_p)
    return y + scaling * ((xd @ lora_A.t()) @ lora_B.t())


# ---------------------------------------------------------------------------- optimizers


def multi_tensor_sumsq(tensors: list[Tensor]) -> Tensor:
    """Per-tensor sums of squares, accumulated in float64."""
    out_dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    sums = [t.double().square().sum() for t in tensors]
    return torch.stack(sums).to(out_dtype) if sums else torch.zeros(0, dtype=out_dtype)


def lamb_trust_ratio(param_norm, update_norm, phi_min=0.0, phi_max=float("inf"), trust_clip=False,
                     min_trust=0.0):
    """phi(||p||) / ||u|| with phi = clamp(., phi_min, phi_max); 1 when either is zero;
    trust_clip caps it at 1; min_trust floors it."""
    w = min(max(param_norm, phi_min), phi_max)
    ratio = w / update_norm if (w > 0 and update_norm > 0) else 1.0
    if trust_clip:
        ratio = min(ratio, 1.0)
    return max(ratio, min_trust)


def lamb_step_(params, grads, exp_avgs, exp_avg_sqs, *, lr, step, grad_divisor=1.0, beta1=0.9,
               beta2=0.999, eps=1e-6, weight_decay=0.01, bias_correction=True, grad_averaging=True,
               adapt=None, trust_clip=False, phi_min=0.0, phi_max=float("inf"), min_trust=0.0):
    """One LAMB step (You et al. 2019) as timm's Lamb computes it, tensor by tensor.

    g = grad / grad_divisor;  m = b1 m + (1 - b1) g  (m += (1 - b1)(g - m));  v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps) + wd p
    p -= lr * ratio * u,  ratio = lamb_trust_ratio(||p||, ||u||) when adapting
    (default: when wd != 0), else 1. Norms are taken in float64 here.
    """
    adapt = (weight_decay != 0) if adapt is None else adapt
    bc1 = 1 - beta1**step if bias_correction else 1.0
    bc2 = 1 - beta2**step if bias_correction else 1.0
    beta3 = 1 - beta1 if grad_averaging else 1.0
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        g = g.to(m.dtype) / grad_divisor
        if grad_averaging:
            m.add_(beta3 * (g - m))
        else:
            m.mul_(beta1).add_(beta3 * g)
        v.mul_(beta2).add_((1 - beta2) * g * g)
        pc = p.to(m.dtype)
        u = (m / bc1) / (v.sqrt() / bc2**0.5 + eps)
        if weight_decay != 0:
            u = u + weight_decay * pc
        ratio = 1.0
        if adapt:
            ratio = lamb_trust_ratio(pc.double().norm().item(), u.double().norm().item(), phi_min,
                                     phi_max, trust_clip, min_trust)
        p.copy_(pc - lr * (u * ratio))


def lars_step_(params, grads, momentum_buffers, *, lr, grad_divisor=1.0, momentum=0.0,
               dampening=0.0, weight_decay=0.0, nesterov=False, trust_coeff=0.001, eps=1e-8,
               trust_clip=False, adapt=None):
    """One LARS step (You et al. 2017) as timm's Lars computes it.

    When adapting (default: wd != 0): ratio = trust_coeff ||p|| / (||g|| + wd ||p|| + eps)
    (1 if a norm is 0; with trust_clip min(ratio / lr, 1)); d = (g + wd p) ratio.
    Momentum: buf = d on the first step, else momentum buf + (1 - dampening) d;
    d = d + momentum buf (Nesterov) or buf. p -= lr d.
    `momentum_buffers` holds a tensor or None per parameter; new buffers are put in it.
    """
    adapt = (weight_decay != 0) if adapt is None else adapt
    for i, (p, g) in enumerate(zip(params, grads)):
        compute = torch.float64 if p.dtype == torch.float64 else torch.float32
        pc, d = p.to(compute), g.to(compute) / grad_divisor
        if adapt:
            pn, gn = pc.double().norm().item(), d.double().norm().item()
            ratio = trust_coeff * pn / (gn + pn * weight_decay + eps) if (pn > 0 and gn > 0) else 1.0
            if trust_clip:
                ratio = min(ratio / lr, 1.0)
            d = (d + weight_decay * pc) * ratio
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = momentum_buffers[i] = d.clone()
            else:
                buf.mul_(momentum).add_((1 - dampening) * d)
            d = d + momentum * buf if nesterov else buf
        p.copy_(pc - lr * d)


# ---------------------------------------------------------------------------- sparse deltas


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


# ---------------------------------------------------------------------------- Hydra


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


# ---------------------------------------------------------------------------- MiSS bat


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

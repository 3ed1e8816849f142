"""Plain-PyTorch LAMB and LARS steps and sums of squares: the oracle of the optimizer ops."""

from __future__ import annotations

import torch
from torch import Tensor


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

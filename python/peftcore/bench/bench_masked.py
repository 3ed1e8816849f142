"""Masked (sparse) training step, the two ways LT-SFT can train only a mask:

* value vector (peftcore.sparse.MaskedTraining): the trainable tensor is the nnz
  masked values; the weight is rebuilt as theta0 + scatter(values) in forward;
* gradient masking: the dense parameters train, a hook multiplies each gradient
  by a 0/1 mask (optimizer state and weight decay stay dense: with AdamW's decoupled
  decay it would move unmasked entries, so decay is 0 for both here).

Both run AdamW on the same 1% mask of an MLP, in the benchmark dtype. `tflops`
counts the step's useful GEMM FLOPs (forward, weight gradients, input gradients
below the first layer) against the matmul rate measured in the same run.
`train_state_MiB` counts what
training keeps beyond the model's own weights: optimizer state, masks, indices and
value vectors (the value form's theta0 replaces the dense weight, it is not a copy).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from peftcore.sparse import MaskedTraining, SparseDelta

from .bench_optim import state_bytes as _state_bytes
from .common import Limits, time_alternating, timing_row


def _mlp(width: int, depth: int, device, dtype) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers).to(device, dtype)


def run(device: torch.device, dtype: torch.dtype, quick: bool, limits: Limits, progress) -> list[dict]:
    width, depth, batch = (1024, 4, 512) if quick else (4096, 4, 4096)
    torch.manual_seed(0)
    base = _mlp(width, depth, device, dtype)
    theta0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    gen = torch.Generator(device="cpu").manual_seed(1)
    theta = {n: t + torch.randn(t.shape, generator=gen).to(device) for n, t in theta0.items()}
    mask = SparseDelta.from_diff(theta0, theta, density=0.01)
    del theta
    x = torch.randn(batch, width, device=device, dtype=dtype)
    y = torch.randn(batch, width, device=device, dtype=dtype)

    value_model = copy.deepcopy(base)
    masked = MaskedTraining(value_model, mask)
    value_opt = torch.optim.AdamW(masked.parameters(), lr=1e-3, weight_decay=0.0)
    # theta0 (the reparametrisation's base) takes the place of the dense weight, which
    # is gone; beyond the model stay the indices and the value vectors.
    value_extra = sum(r.indices.numel() * 8 + v.numel() * v.element_size()
                      for r, v in (masked._reparam(n) for n in masked.entries))

    grad_model = copy.deepcopy(base).requires_grad_(False)
    params = dict(grad_model.named_parameters())
    grad_masks = {}
    for name, e in mask.entries.items():
        m = torch.zeros(params[name].numel(), device=device, dtype=dtype)
        m[e.indices.to(device)] = 1.0
        grad_masks[name] = m.view(params[name].shape)
        params[name].requires_grad_(True)
        params[name].register_hook(lambda g, m=grad_masks[name]: g * m)
    grad_opt = torch.optim.AdamW([params[n] for n in grad_masks], lr=1e-3, weight_decay=0.0)
    grad_extra = sum(m.numel() * m.element_size() for m in grad_masks.values())

    def step(model, opt):
        def run_step():
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return run_step

    t = time_alternating({"value vector (peftcore)": step(value_model, value_opt),
                          "gradient mask": step(grad_model, grad_opt)},
                         device, warmup=2, reps=3 if device.type == "cpu" else 10, rounds=3)
    states = {"value vector (peftcore)": _state_bytes(value_opt) + value_extra,
              "gradient mask": _state_bytes(grad_opt) + grad_extra}
    flops = 2 * batch * width * width * (3 * depth - 1)
    peak = limits.matmul_tflops[str(dtype).replace("torch.", "")]
    rows = []
    for name, timing in t.items():
        case = {"op": "masked training step", "set": f"MLP {depth}x{width}^2, batch {batch}, 1% mask",
                "dtype": str(dtype).replace("torch.", "")}
        tflops = flops / timing.median_s / 1e12
        rows.append(timing_row(case, device, name, timing,
                               gradmask_over_this=t["gradient mask"].median_s / timing.median_s,
                               train_state_MiB=states[name] / 2**20,
                               tflops=tflops, pct_matmul_peak=100 * tflops / peak))
    return rows

"""LT-SFT mask selection: the global top-k of |theta - theta0| over a whole model.

peftcore.sparse.SparseDelta.from_diff (exact k with documented tie order, a radix
select over float32 bit patterns one parameter at a time: no concatenated copy of
the model) against what one writes without it: concatenate every |diff| into one
tensor and call torch.topk. `extra_MiB` is the largest temporary each keeps beyond
the two state dicts: the concatenation for topk, one parameter's magnitudes for ours.
"""

from __future__ import annotations

import torch

from peftcore.sparse import SparseDelta

from .common import Limits, time_alternating, timing_row


def run(device: torch.device, dtype: torch.dtype, quick: bool, limits: Limits, progress) -> list[dict]:
    per = 128 * 1024 if quick else 512 * 1024
    gen = torch.Generator(device="cpu").manual_seed(0)
    theta0 = {f"p{i}": torch.randn(per // 512, 512, generator=gen).to(device) for i in range(200)}
    theta = {n: t + torch.randn(t.shape, generator=gen).to(device) for n, t in theta0.items()}
    n_params = sum(t.numel() for t in theta0.values())
    k = n_params // 100

    def peftcore_select():
        SparseDelta.from_diff(theta0, theta, k=k)

    def concat_topk():
        flat = torch.cat([(theta[n] - theta0[n]).abs().flatten() for n in theta0])
        torch.topk(flat, k, sorted=False)

    t = time_alternating({"peftcore from_diff": peftcore_select, "cat + torch.topk": concat_topk}, device,
                         warmup=1, reps=2 if device.type == "cpu" else 5, rounds=3)
    extra = {"peftcore from_diff": per * 4, "cat + torch.topk": n_params * 4}
    rows = []
    for name, timing in t.items():
        gbs = 2 * n_params * 4 / timing.median_s / 1e9  # theta and theta0 read once
        case = {"op": "top-k of abs(theta - theta0)", "set": f"{n_params / 1e6:.0f}M params, k = 1%"}
        rows.append(timing_row(case, device, name, timing,
                               topk_over_this=t["cat + torch.topk"].median_s / timing.median_s,
                               extra_MiB=extra[name] / 2**20, GBps=gbs,
                               pct_bandwidth=100 * gbs / limits.bandwidth_gbs))
    return rows

"""Composing sparse deltas into a model: peftcore.sparse.apply vs a per-parameter
Python loop of index_add_ (what one writes without peftcore).

Two deltas of 1% density each over a ~100M-parameter set (26M with --quick),
applied and reverted. Bytes counted for peftcore's apply: per touched entry, the
index (8 B) and value (4 B) of each delta read, the parameter read and written
(4 + 4 B) and the saved original written (4 B) plus the union index (8 B).

At 1% density nearly every touched entry is alone in its 64-byte cache line, so the
memory system moves whole lines: each union entry costs a line read and written back
by apply and again by revert (256 B), for either candidate. `pct_line_floor` is that
traffic over the time, as a share of the measured copy bandwidth: how close a
candidate is to what the hardware allows for this access pattern (the `GBps` count
of useful bytes can never get near the bandwidth here).
"""

from __future__ import annotations

import torch
from torch import nn

from peftcore.sparse import SparseDelta, apply, revert

from .common import Limits, time_alternating, timing_row


def make_model(quick: bool, device) -> nn.Module:
    per = 128 * 1024 if quick else 512 * 1024
    return nn.ParameterList([nn.Parameter(torch.randn(per // 512, 512, device=device)) for _ in range(200)])


def run(device: torch.device, dtype: torch.dtype, quick: bool, limits: Limits, progress) -> list[dict]:
    model = make_model(quick, device)
    theta0 = {n: p.detach() for n, p in model.named_parameters()}
    gen = torch.Generator(device="cpu").manual_seed(0)
    deltas = []
    for _ in range(2):
        theta = {n: t + torch.randn(t.shape, generator=gen).to(device) for n, t in theta0.items()}
        deltas.append(SparseDelta.from_diff(theta0, theta, density=0.01))
        del theta
    params = dict(model.named_parameters())

    def peftcore_apply_revert():
        revert(model, apply(model, deltas))

    def loop_apply_revert():  # the plain-PyTorch way: index_add_ per delta per parameter
        with torch.no_grad():
            for d in deltas:
                for name, e in d.entries.items():
                    params[name].view(-1).index_add_(0, e.indices, e.values)
            for d in deltas:
                for name, e in d.entries.items():
                    params[name].view(-1).index_add_(0, e.indices, -e.values)

    handle = apply(model, deltas)  # what apply keeps for an exact revert: union indices + originals
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()  # slices share one buffer
                for pair in handle.saved.values() for t in pair}
    kept = {"peftcore": sum(storages.values()),
            "index_add_ loop": 0}  # keeps nothing, and cannot restore 16-bit weights exactly
    revert(model, handle)
    t = time_alternating({"peftcore": peftcore_apply_revert, "index_add_ loop": loop_apply_revert},
                         device, warmup=1, reps=2 if device.type == "cpu" else 10, rounds=3)
    n_params = sum(p.numel() for p in model.parameters())
    nnz = sum(d.nnz for d in deltas)
    # apply: per delta entry 12 B read; per union entry ~28 B; revert: ~20 B per union entry.
    bytes_moved = 12 * nnz + 48 * nnz
    union = sum(u.numel() for u, _ in handle.saved.values())
    line_bytes = 256 * union
    rows = []
    for name, timing in t.items():
        gbs = bytes_moved / timing.median_s / 1e9
        case = {"op": "sparse apply+revert", "set": f"{n_params / 1e6:.0f}M params, 2 x 1% deltas"}
        rows.append(timing_row(case, device, name, timing,
                               loop_over_this=t["index_add_ loop"].median_s / timing.median_s,
                               kept_MiB=kept[name] / 2**20,
                               GBps=gbs, pct_bandwidth=100 * gbs / limits.bandwidth_gbs,
                               pct_line_floor=100 * line_bytes / timing.median_s / 1e9 / limits.bandwidth_gbs))
    return rows

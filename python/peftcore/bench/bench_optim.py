"""LAMB and LARS steps: peftcore's fused optimizers vs timm (and torch-optimizer's Lamb).

Two parameter sets: "lora" (many small adapter tensors, where per-tensor overhead
dominates) and "dense" (~100M parameters over ~200 tensors, where memory bandwidth
does). Achieved bandwidth counts the minimal traffic of one step: LAMB reads p, g,
m, v and writes p, m, v (28 B per float32 parameter); LARS with momentum reads p, g,
buf and writes p, buf (20 B).
"""

from __future__ import annotations

import torch
from torch import nn

from peftcore.optim import Lamb, Lars

from .common import Limits, time_alternating, timing_row


def lora_set(device, dtype):
    return [(16, 1024)] * 96 + [(1024, 16)] * 96


def dense_set(quick: bool):
    per = 128 * 1024 if quick else 500 * 1024  # 200 tensors: 26M (quick) or 102M params
    return [(per // 512, 512)] * 200


def make_params(shapes, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: 1B values on a GPU
    params = []
    for s in shapes:
        p = nn.Parameter(torch.randn(s, generator=g, device=device, dtype=dtype) * 0.02)
        p.grad = torch.randn(s, generator=g, device=device, dtype=dtype) * 1e-3
        params.append(p)
    return params


def candidates(kind: str):
    import timm.optim as timm_optim
    if kind == "lamb":
        out = {"peftcore": lambda ps: Lamb(ps, lr=1e-3, weight_decay=0.01),
               "timm": lambda ps: timm_optim.Lamb(ps, lr=1e-3, weight_decay=0.01)}
        try:
            import torch_optimizer
            out["torch-optimizer"] = lambda ps: torch_optimizer.Lamb(ps, lr=1e-3, weight_decay=0.01)
        except ImportError:
            pass
        return out, 28
    return ({"peftcore": lambda ps: Lars(ps, lr=0.1, momentum=0.9, weight_decay=1e-4),
             "timm": lambda ps: timm_optim.Lars(ps, lr=0.1, momentum=0.9, weight_decay=1e-4)}, 20)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """What the optimizer keeps between steps (moments, buffers, step counters)."""
    seen = {}
    for s in opt.state.values():
        for t in s.values():
            if isinstance(t, torch.Tensor):
                seen[t.data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def run(device: torch.device, dtype: torch.dtype, quick: bool, limits: Limits, progress) -> list[dict]:
    rows = []
    dtype = torch.float32  # optimizer state is float32; the sets are float32 parameters
    sets = {"lora": lora_set(device, dtype), "dense": dense_set(quick)}
    if not quick and device.type == "cuda":
        sets["dense-1B"] = [(8192, 8192)] * 15  # ~1.0e9 parameters
    reps, rounds = (2, 3) if device.type == "cpu" else (10, 5)
    for kind in ("lamb", "lars"):
        makers, bytes_per_param = candidates(kind)
        for set_name, shapes in progress(list(sets.items()), desc=kind):
            if device.type == "cpu" and set_name == "dense" and kind == "lamb" and len(makers) > 2:
                makers = {k: v for k, v in makers.items() if k != "torch-optimizer"}  # too slow here
            n_params = sum(a * b for a, b in shapes)
            opts = {name: make(make_params(shapes, device, dtype)) for name, make in makers.items()}
            timings = time_alternating({name: opt.step for name, opt in opts.items()}, device,
                                       warmup=1, reps=reps, rounds=rounds)
            state = {name: state_bytes(opt) for name, opt in opts.items()}
            del opts
            for name, t in timings.items():
                gbs = bytes_per_param * n_params / t.median_s / 1e9
                case = {"op": f"{kind} step", "set": set_name, "tensors": len(shapes), "params_M": n_params / 1e6}
                rows.append(timing_row(case, device, name, t,
                                       timm_over_this=timings["timm"].median_s / t.median_s,
                                       state_MiB=state[name] / 2**20,
                                       GBps_min_traffic=gbs, pct_bandwidth=100 * gbs / limits.bandwidth_gbs))
    return rows

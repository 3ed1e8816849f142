"""Hydra and MiSS/Bone layers, forward + backward: peftcore vs HF PEFT's MissLinear
(bone and bat forms) and the frozen base linear. PEFT's bat rebuilds W' with two
out x in temporaries and materialises the full weight gradient in backward;
peftcore's keeps one W' temporary and contracts the weight gradient band by band."""

from __future__ import annotations

import copy

import torch
from torch import nn

import peftcore

from .bench_lora import peak_extra_bytes, rotating_fwd_bwd, saved_activation_bytes
from .common import Limits, time_alternating, timing_row

QUICK_SHAPES = [(4096, 1024, 1024, 64)]
FULL_SHAPES = [(n, d, d, 64) for d in (4096,) for n in (2048, 8192)]


def peft_miss(base: nn.Linear, r: int, form) -> nn.Module:
    from peft import MissConfig
    from peft.tuners.miss.layer import MissLinear

    layer = MissLinear(copy.deepcopy(base), "default", config=MissConfig(r=r, init_weights=form), r=r)
    layer.base_layer.requires_grad_(False)
    return layer


def build(base: nn.Linear, r: int) -> dict[str, nn.Module]:
    mods = {
        "frozen base": copy.deepcopy(base).requires_grad_(False),
        "peftcore bone": peftcore.BoneLinear(copy.deepcopy(base), r=r, variant="bone"),
        "hf peft bone": peft_miss(base, r, True),
        "peftcore bat": peftcore.BoneLinear(copy.deepcopy(base), r=r, variant="bat"),
        "hf peft bat": peft_miss(base, r, "bat"),
        "peftcore hydra 8+8": peftcore.HydraLinear(copy.deepcopy(base), 8, 8, 16, 16),
        "peftcore hydra 16+16": peftcore.HydraLinear(copy.deepcopy(base), 16, 16, 32, 32),
    }
    with torch.no_grad():  # non-zero adapters, the same in both libraries
        for kind in ("bone", "bat"):
            ours, theirs = mods[f"peftcore {kind}"], mods[f"hf peft {kind}"]
            ours.miss_block.normal_(0, 0.01)
            theirs.miss_block["default"].copy_(ours.miss_block)
    return mods


def run(device: torch.device, dtype: torch.dtype, quick: bool, limits: Limits, progress) -> list[dict]:
    rows = []
    reps, rounds = (2, 10) if device.type == "cpu" else (10, 10)  # CPU: this VM drifts; alternate often
    for n, i, o, r in progress(QUICK_SHAPES if quick else FULL_SHAPES, desc="adapters"):
        torch.manual_seed(0)
        mods = build(nn.Linear(i, o, device=device, dtype=dtype), r)
        xs, step = rotating_fwd_bwd(n, i, o, device, dtype)
        steps = {k: step(m) for k, m in mods.items()}
        t = time_alternating(steps, device, reps=reps, rounds=rounds)
        # The limit view: the frozen layer's own FLOPs (x W^T and G W) per second, as a
        # share of the large-GEMM rate measured in this run: what the adapter leaves of it.
        base_flops, peak = 4 * n * i * o, limits.matmul_tflops[str(dtype).replace("torch.", "")]
        for name, timing in t.items():
            peer = name.replace("peftcore", "hf peft") if name.startswith("peftcore") else None
            case = {"op": "adapter fwd+bwd", "shape": f"N={n} {i}x{o} r={r}",
                    "dtype": str(dtype).replace("torch.", "")}
            rows.append(timing_row(case, device, name, timing,
                                   vs_frozen_base=timing.median_s / t["frozen base"].median_s,
                                   peft_over_this=t[peer].median_s / timing.median_s if peer in t else float("nan"),
                                   base_tflops=base_flops / timing.median_s / 1e12,
                                   pct_matmul_peak=100 * base_flops / timing.median_s / 1e12 / peak,
                                   saved_MiB=saved_activation_bytes(mods[name], xs[0]) / 2**20,
                                   peak_MiB=peak_extra_bytes(steps[name], device) / 2**20))
    return rows

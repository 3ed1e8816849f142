"""LoRA forward + backward on CUDA with the GPU paths that are off by default
(csrc/common/gpu_paths.h) switched on, each its own candidate beside the default
peftcore layer, the frozen base and HF PEFT: `peftcore side stream` (dA, dB beside
the G W GEMM), `peftcore tc skinny` (WMMA skinny kernels, dropout mask on the fly)
and both. A family of its own (a process of its own in bench/gpu_check.sh), so that
a fault in a kernel not yet proven on a GPU cannot cost the lora family's results.
The column `vs_peftcore` is the candidate's time over the default layer's.
"""

from __future__ import annotations

import torch
from torch import nn

import peftcore

from .bench_lora import build_candidates, rotating_fwd_bwd, saved_activation_bytes
from .common import Limits, time_alternating, timing_row

# The target shape (N=8192, 4096^2, r=16) with its neighbours in N and r;
# N=512 shows what the extra launches (partial sums) cost where launches dominate.
SHAPES = [(n, 4096, 4096, 16) for n in (512, 2048, 8192, 16384)] + [(8192, 4096, 4096, r) for r in (8, 64)]
QUICK_SHAPES = [(2048, 4096, 4096, 16)]
PATHS = {"peftcore side stream": ("side stream",), "peftcore tc skinny": ("tc skinny",),
         "peftcore tc+side": ("tc skinny", "side stream")}
SWITCHES = {"side stream": "_set_side_stream", "tc skinny": "_set_tc_skinny"}


def with_paths(fn, paths: tuple[str, ...]):
    """fn with the given GPU paths switched on for its duration."""
    def run():
        for path in paths:
            getattr(peftcore._C, SWITCHES[path])(True)
        try:
            fn()
        finally:
            for path in paths:
                getattr(peftcore._C, SWITCHES[path])(False)
    return run


def paths_for(dropout: float) -> dict[str, tuple[str, ...]]:
    """With dropout the side stream alone changes nothing (cuBLAS dA shares dx's buffer)."""
    return {k: v for k, v in PATHS.items() if dropout == 0.0 or "tc skinny" in v}


def run(device: torch.device, dtype: torch.dtype, quick: bool, limits: Limits, progress) -> list[dict]:
    if device.type != "cuda":
        raise ValueError("lora_paths times CUDA paths; run it with --device cuda")
    rows = []
    for dropout in (0.0, 0.1):
        for n, i, o, r in progress(QUICK_SHAPES if quick else SHAPES, desc=f"lora paths p={dropout}"):
            torch.manual_seed(0)
            base = nn.Linear(i, o, device=device, dtype=dtype)
            modules = build_candidates(base, r, dropout)
            del modules["eager torch"]
            xs, step = rotating_fwd_bwd(n, i, o, device, dtype)
            steps = {k: step(m) for k, m in modules.items()}
            for name, paths in paths_for(dropout).items():
                steps[name] = with_paths(steps["peftcore"], paths)
            timings = time_alternating(steps, device, reps=10, rounds=10)
            case = {"op": "lora_linear fwd+bwd", "shape": f"N={n} {i}x{o} r={r}", "dropout": dropout,
                    "dtype": str(dtype).replace("torch.", "")}
            for name, t in timings.items():
                module = modules.get(name, modules["peftcore"])
                rows.append(timing_row(case, device, name, t,
                                       vs_frozen_base=t.median_s / timings["frozen base"].median_s,
                                       vs_peftcore=t.median_s / timings["peftcore"].median_s,
                                       hf_peft_over_this=timings["hf peft"].median_s / t.median_s,
                                       saved_MiB=saved_activation_bytes(module, xs[0]) / 2**20))
    return rows

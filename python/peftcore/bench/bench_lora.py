"""LoRA linear, forward + backward: frozen base vs peftcore vs HF PEFT vs eager PyTorch.

Every candidate computes the gradient of x (as inside a network) and, except the
frozen base, of A and B. Reported per shape: median time, ratio to the frozen
base linear and to HF PEFT, achieved TFLOP/s and % of the measured matmul rate,
and the activation bytes each candidate saves for backward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import peftcore
from peftcore._peers import EagerLora, peft_lora_linear

from .common import Limits, time_alternating, timing_row

# (tokens N, in, out, r)
QUICK_SHAPES = [(4096, 1024, 1024, 16), (1024, 1024, 1024, 16)]
FULL_SHAPES = [
    (n, i, o, r)
    for (i, o) in [(4096, 4096), (4096, 11008), (8192, 8192)]
    for n in (2048, 8192, 16384)
    for r in (16,)
] + [(8192, 4096, 4096, r) for r in (8, 64, 128)] + [(512, 4096, 4096, 16)]  # short sequences too


def lora_flops(n: int, i: int, o: int, r: int) -> float:
    """Forward + backward FLOPs of a LoRA linear with a frozen base (no dW)."""
    base = 2 * 2 * n * i * o  # x W^T and G W
    lora = 2 * n * r * (i + o) * 3  # shrink/expand forward; T, dB, dA, T A backward
    return base + lora


def saved_activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves that are not parameters (deduplicated)."""
    params = {p.data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):  # storage bytes: an expanded stand-in costs what it stores, not its shape
        if t.data_ptr() not in params:
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x.detach().requires_grad_(True))
    return sum(seen.values())


def peak_extra_bytes(fn, device: torch.device) -> float:
    """GPU memory that one call of fn (a forward + backward) holds at its peak beyond
    what was allocated before it; NaN on a CPU, which keeps no allocator statistics."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - before)


def rotating_fwd_bwd(n: int, i: int, o: int, device, dtype):
    """Three rotating inputs (so a small case does not run from warm caches only) and a
    factory of forward + backward closures over them."""
    xs = [torch.randn(n, i, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
    grad = torch.randn(n, o, device=device, dtype=dtype)
    counter = [0]

    def step(module):
        def fn():
            counter[0] += 1
            module(xs[counter[0] % len(xs)]).backward(grad)
        return fn

    return xs, step


def build_candidates(base: nn.Linear, r: int, dropout: float) -> dict[str, nn.Module]:
    frozen = copy.deepcopy(base).requires_grad_(False)
    ours = peftcore.LoraLinear(copy.deepcopy(base), r=r, alpha=2 * r, dropout=dropout)
    peft = peft_lora_linear(base, r=r, alpha=2 * r, dropout=dropout)
    peft.base_layer.requires_grad_(False)
    eager = EagerLora(base, r=r, alpha=2 * r, dropout=dropout)
    with torch.no_grad():  # the same non-zero adapter everywhere
        b = torch.randn_like(ours.lora_B.weight) * 0.01
        ours.lora_B.weight.copy_(b)
        peft.lora_B["default"].weight.copy_(b)
        peft.lora_A["default"].weight.copy_(ours.lora_A.weight)
        eager.lora_B.weight.copy_(b)
        eager.lora_A.weight.copy_(ours.lora_A.weight)
    return {"frozen base": frozen, "peftcore": ours, "hf peft": peft, "eager torch": eager}


def run(device: torch.device, dtype: torch.dtype, quick: bool, limits: Limits, progress) -> list[dict]:
    rows = []
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    reps, rounds = (2, 10) if device.type == "cpu" else (10, 10)  # CPU: this VM drifts; alternate often
    for dropout in (0.0, 0.1):
        for n, i, o, r in progress(shapes, desc=f"lora p={dropout}"):
            torch.manual_seed(0)
            base = nn.Linear(i, o, device=device, dtype=dtype)
            modules = build_candidates(base, r, dropout)
            xs, step = rotating_fwd_bwd(n, i, o, device, dtype)
            steps = {k: step(m) for k, m in modules.items()}
            timings = time_alternating(steps, device, reps=reps, rounds=rounds)
            flops = lora_flops(n, i, o, r)
            peak = limits.matmul_tflops[str(dtype).replace("torch.", "")]
            for name, t in timings.items():
                f = flops if name != "frozen base" else 4 * n * i * o
                tflops = f / t.median_s / 1e12
                case = {"op": "lora_linear fwd+bwd", "shape": f"N={n} {i}x{o} r={r}", "dropout": dropout,
                        "dtype": str(dtype).replace("torch.", "")}
                rows.append(timing_row(case, device, name, t,
                                       vs_frozen_base=t.median_s / timings["frozen base"].median_s,
                                       hf_peft_over_this=timings["hf peft"].median_s / t.median_s,
                                       tflops=tflops, pct_matmul_peak=100 * tflops / peak,
                                       saved_MiB=saved_activation_bytes(modules[name], xs[0]) / 2**20,
                                       peak_MiB=peak_extra_bytes(steps[name], device) / 2**20))
    return rows

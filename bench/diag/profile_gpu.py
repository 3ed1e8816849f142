"""Where the GPU time goes, kernel by kernel, for the cases still short of their
targets: LoRA forward+backward (peftcore vs HF PEFT, N=8192, 4096x4096, r=16, bf16,
dropout 0 and 0.1), MiSS bat (peftcore vs PEFT), one LAMB step on a 1B fp32 set,
sparse apply+revert and GPU top-k selection. Prints torch.profiler's CUDA-time
table per case (run by bench/gpu_check.sh's `profile` phase), so that one device
run tells the next optimisation what to attack."""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import peftcore
from peftcore.optim import Lamb
from peftcore.sparse import SparseDelta, apply, revert

ROWS = 14


def show(title: str, fn, reps: int = 5) -> None:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    print(f"==== {title} ({reps} reps)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=ROWS, max_name_column_width=60))
    sys.stdout.flush()


def lora_cases() -> None:
    from peftcore._peers import peft_lora_linear

    n, d, r = 8192, 4096, 16
    x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
    for p in (0.0, 0.1):
        base = nn.Linear(d, d)
        peer = peft_lora_linear(base, r=r, alpha=2 * r, dropout=p)
        peer.base_layer.requires_grad_(False)
        ours = peftcore.LoraLinear(base, r=r, alpha=2 * r, dropout=p)
        for name, layer in (("peftcore", ours), ("hf peft", peer)):
            layer = layer.to("cuda", torch.bfloat16).train()
            show(f"LoRA {name} N={n} {d}x{d} r={r} p={p}", lambda: layer(x).backward(g))


def bat_case() -> None:
    from peftcore.bench.bench_adapters import peft_miss

    n, d, r = 8192, 4096, 64
    x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
    base = nn.Linear(d, d)
    for name, layer in (("peftcore", peftcore.BoneLinear(base, r=r, variant="bat")),
                        ("hf peft", peft_miss(base, r, "bat"))):
        layer = layer.to("cuda", torch.bfloat16)
        show(f"bat {name} N={n} {d}x{d} r={r}", lambda: layer(x).backward(g))


def lamb_case() -> None:
    params = [nn.Parameter(torch.randn(8192, 8192, device="cuda")) for _ in range(15)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = Lamb(params, lr=1e-3, weight_decay=0.01)
    show("LAMB step, 15 x 8192^2 fp32 (1B)", opt.step)


def sparse_cases() -> None:
    model = nn.ParameterList([nn.Parameter(torch.randn(1024, 512, device="cuda")) for _ in range(200)])
    theta0 = {k: v.detach() for k, v in model.named_parameters()}
    deltas = []
    for _ in range(2):
        theta = {k: v + torch.randn_like(v) for k, v in theta0.items()}
        deltas.append(SparseDelta.from_diff(theta0, theta, density=0.01))
    show("sparse apply+revert, 105M params, 2 x 1%", lambda: revert(model, apply(model, deltas)))
    theta = {k: v + torch.randn_like(v) for k, v in theta0.items()}
    show("top-k selection (from_diff), 105M params, 1%",
         lambda: SparseDelta.from_diff(theta0, theta, density=0.01), reps=3)


if __name__ == "__main__":
    for case in (lora_cases, bat_case, lamb_case, sparse_cases):
        try:
            case()
        except Exception as exc:  # one failing case must not hide the others
            print(f"==== {case.__name__} failed: {type(exc).__name__}: {exc}")

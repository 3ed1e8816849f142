"""`python -m peftcore demo --task synthetic`: a seconds-long check that every adapter
kind and optimizer trains, without any data or pretrained model.

A frozen random MLP must learn to imitate a "teacher" that differs from it by a
low-rank change of each hidden layer: what the adapters can express. The demo
prints the loss going down and what the adapters cost per training step relative
to the frozen model's own forward + backward. Flags pick the adapter kind (lora,
hydra, bone), the optimizer (adamw, lamb) and the number of steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import peftcore

from .demo_common import adapter_config, make_optimizer


def make_mlp(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, width))
    return nn.Sequential(*layers)


def perturb_low_rank(model: nn.Sequential, rank: int, size: float) -> None:
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                out_f, in_f = layer.weight.shape
                u, v = torch.randn(out_f, rank), torch.randn(rank, in_f)
                layer.weight.add_(size * (u @ v) / (rank * in_f) ** 0.5)


def step_time(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    """Median seconds of one forward + backward (grads w.r.t. the input too)."""
    times = []
    for _ in range(reps):
        xi = x.detach().requires_grad_(True)
        start = time.perf_counter()
        model(xi).square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(prog="python -m peftcore demo --task synthetic",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--adapter", choices=["lora", "hydra", "bone"], default="lora")
    parser.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    print(f"peftcore {peftcore.__version__}: {peftcore.build_info()}")
    print(f"adapter {args.adapter}, optimizer {args.optimizer}, {args.steps} steps")
    base = make_mlp(args.width, args.depth)
    teacher = copy.deepcopy(base)
    perturb_low_rank(teacher, rank=4, size=1.0)
    student = peftcore.inject(copy.deepcopy(base), adapter_config(args.adapter, args.rank, r"\d+"))
    trainable = [p for p in student.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in student.parameters())
    print(f"trainable parameters: {n_train:,} of {n_total:,} ({100 * n_train / n_total:.2f}%)")

    opt = make_optimizer(args.optimizer, trainable, args.lr)
    first = None
    for step in range(args.steps + 1):
        x = torch.randn(args.batch, args.width)
        with torch.no_grad():
            target = teacher(x)
        loss = nn.functional.mse_loss(student(x), target)
        first = first if first is not None else loss.item()
        if step % max(1, args.steps // 6) == 0:
            print(f"step {step:4d}  loss {loss.item():.5f}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(f"loss: {first:.5f} -> {loss.item():.5f} ({loss.item() / first:.3f}x the start)")

    frozen = copy.deepcopy(base).requires_grad_(False)
    x = torch.randn(4 * args.batch, args.width)
    step_time(frozen, x, 3), step_time(student, x, 3)  # warm-up
    t_frozen, t_lora = [], []
    for _ in range(5):  # alternate candidates so drift hits both alike
        t_frozen.append(step_time(frozen, x, 5))
        t_lora.append(step_time(student, x, 5))
    tf, tl = statistics.median(t_frozen), statistics.median(t_lora)
    print(
        f"forward+backward, {4 * args.batch} tokens: frozen base {tf * 1e3:.2f} ms, "
        f"with peftcore {args.adapter} {tl * 1e3:.2f} ms -> {tl / tf:.3f}x the frozen baseline"
    )
    return first, loss.item()


if __name__ == "__main__":
    main()

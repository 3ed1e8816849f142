"""Each pass of the LoRA and MiSS-bat forward+backward timed alone, next to the
bytes it must move and the FLOPs it must do, and the alternative formulations of
the same product side by side (which operand order, whole product or N-slab
batches summed). The profile phase says which kernels are slow inside the op; this
says how far each part is from its own floor and which formulation of it the
library should call. Run by bench/gpu_check.sh's `profile` phase.

    python bench/diag/skinny_parts.py [--device cuda|cpu] [--small]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import peftcore  # noqa: F401  (registers torch.ops.peftcore)
from peftcore.bench.common import _time_once, measure_limits, sync, time_stream


def median_s(fn, device: torch.device, reps: int) -> float:
    for _ in range(3):
        fn()
    sync(device)
    if device.type == "cuda":
        return statistics.median(time_stream(fn, reps))
    return statistics.median(_time_once(fn) for _ in range(reps))


def slab_tn(a: torch.Tensor, b: torch.Tensor, slabs: int) -> torch.Tensor:
    """a^T b with the row dimension cut into `slabs` batches and summed (manual split-K)."""
    n = a.shape[0] // slabs * slabs
    out = torch.bmm(a[:n].view(slabs, -1, a.shape[1]).transpose(1, 2), b[:n].view(slabs, -1, b.shape[1])).sum(0)
    return out if n == a.shape[0] else out.addmm_(a[n:].t(), b[n:])


def report(title: str, rows: list[tuple[str, float, float, float]], limits, dtype) -> None:
    peak = limits.matmul_tflops[str(dtype).replace("torch.", "")]
    print(f"==== {title}")
    print(f"{'part':44s} {'us':>9s} {'GB/s':>8s} {'%copy':>6s} {'TFLOP/s':>8s} {'%mm':>5s}")
    for name, sec, nbytes, flops in rows:
        gbs, tfl = nbytes / sec / 1e9, flops / sec / 1e12
        print(f"{name:44s} {sec * 1e6:9.1f} {gbs:8.0f} {100 * gbs / limits.bandwidth_gbs:6.1f} "
              f"{tfl:8.1f} {100 * tfl / peak:5.1f}")


def lora_parts(n: int, d: int, r: int, device, dtype, limits, reps: int) -> None:
    e = torch.tensor([], dtype=dtype).element_size()
    x, g = (torch.randn(n, d, device=device, dtype=dtype) for _ in range(2))
    w = torch.randn(d, d, device=device, dtype=dtype) / d**0.5
    a, b = (torch.randn(r, d, device=device, dtype=dtype), torch.randn(d, r, device=device, dtype=dtype))
    h, t = (torch.randn(n, r, device=device, dtype=dtype) for _ in range(2))
    y = torch.empty(n, d, device=device, dtype=dtype)
    big, skinny = n * d * d * 2, n * d * r * 2
    nd, nr = n * d * e, n * r * e
    cases = [
        ("big: x W^T (mm)", lambda: torch.mm(x, w.t()), 2 * nd, big),
        ("big: y += x W^T (addmm_, beta=1)", lambda: y.addmm_(x, w.t()), 3 * nd, big),
        ("big: G W (mm)", lambda: torch.mm(g, w), 2 * nd, big),
        ("shrink: x A^T", lambda: torch.mm(x, a.t()), nd + nr, skinny),
        ("shrink: (A x^T)^T", lambda: torch.mm(a, x.t()), nd + nr, skinny),
        ("expand: h B^T into y (mm)", lambda: torch.mm(h, b.t()), nd + nr, skinny),
        ("T: G B", lambda: torch.mm(g, b), nd + nr, skinny),
        ("dB: G^T h", lambda: torch.mm(g.t(), h), nd + nr, skinny),
        ("dB: (h^T G)^T", lambda: torch.mm(h.t(), g), nd + nr, skinny),
        ("dA: T^T x", lambda: torch.mm(t.t(), x), nd + nr, skinny),
        ("dA: (x^T T)^T", lambda: torch.mm(x.t(), t), nd + nr, skinny),
        ("dx part: T A into grad_x (mm)", lambda: torch.mm(t, a), nd + nr, skinny),
        ("copy of x (the bandwidth floor of one pass)", lambda: x.clone(), 2 * nd, 0),
    ] + [(f"dA: T^T x in {s} N-slabs (bmm + sum)", lambda s=s: slab_tn(t, x, s), nd + nr, skinny)
         for s in (4, 16, 64)]
    # The backward's independent products: the large dx GEMM is compute-bound and the
    # skinny dA, dB are memory-bound, so a side stream might overlap them.
    serial = lambda: (torch.mm(g, w), torch.mm(t.t(), x), torch.mm(h.t(), g))  # noqa: E731
    cases.append(("backward trio dx, dA, dB: one stream", serial, 4 * nd, big + 2 * skinny))
    if device.type == "cuda":
        side = torch.cuda.Stream(device)

        def overlapped():
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                da, db = torch.mm(t.t(), x), torch.mm(h.t(), g)
            dx = torch.mm(g, w)
            torch.cuda.current_stream(device).wait_stream(side)
            return dx, da, db

        cases.append(("backward trio: dA, dB on a side stream", overlapped, 4 * nd, big + 2 * skinny))
    rows = [(name, median_s(fn, device, reps), nbytes, flops) for name, fn, nbytes, flops in cases]
    # The op itself, forward and backward apart, p = 0 and p = 0.1.
    for p in (0.0, 0.1):
        xr = x.detach().requires_grad_(True)
        args = (w, None, a.detach().requires_grad_(True), b.detach().requires_grad_(True), 2.0, p, True)
        fwd = lambda: peftcore.ops.lora_linear(xr, *args)  # noqa: E731
        out = fwd()
        rows.append((f"peftcore lora forward p={p}", median_s(fwd, device, reps), 2 * nd, big + 2 * skinny))
        rows.append((f"peftcore lora fwd+bwd p={p}", median_s(lambda: fwd().backward(g), device, reps),
                     6 * nd, 2 * big + 6 * skinny))
        del out
    report(f"LoRA parts N={n} {d}x{d} r={r} {dtype}", rows, limits, dtype)


def bat_parts(n: int, d: int, r: int, device, dtype, limits, reps: int) -> None:
    e = torch.tensor([], dtype=dtype).element_size()
    x, g = (torch.randn(n, d, device=device, dtype=dtype) for _ in range(2))
    w = torch.randn(d, d, device=device, dtype=dtype) / d**0.5
    blk = torch.randn(d // r, r, r, device=device, dtype=dtype) * 0.01
    dw = torch.randn(d, d, device=device, dtype=dtype)
    ob, ib = d // r, d // r
    op = torch.ops.peftcore
    only_block = [False, False, False, True]
    cases = [
        ("big: G^T x (the dW' GEMM)", lambda: torch.mm(g.t(), x), 2 * n * d * e + d * d * e, 2 * n * d * d),
        ("W' build (bone_bat_weight)", lambda: op.bone_bat_weight(w, blk), 2 * d * d * e, 2 * d * d * r),
        ("identity part: dW' block sums", lambda: dw.view(ob, r, ib, r).sum(2), d * d * e, d * d),
        ("W contraction: baddbmm over dW'",
         lambda: torch.bmm(w.view(ob, r * ib, r).transpose(1, 2), dw.view(ob, r * ib, r)), 2 * d * d * e, 2 * d * d * r),
        # The same contraction with its long inner dimension cut into 8 pieces (8x the
        # batch, a sum after): more blocks for a GPU to run at once.
        ("W contraction: 8 K-pieces per block + sum",
         lambda: torch.bmm(w.view(ob * 8, r * ib // 8, r).transpose(1, 2),
                           dw.view(ob * 8, r * ib // 8, r)).view(ob, 8, r, r).sum(1), 2 * d * d * e, 2 * d * d * r),
        ("backward, block grad only, 16M-element bands",
         lambda: op.bone_bat_linear_backward(g, x, w, blk, only_block, 1 << 24), 2 * n * d * e, 2 * n * d * d),
        ("backward, block grad only, 512-row bands",
         lambda: op.bone_bat_linear_backward(g, x, w, blk, only_block, 512 * d), 2 * n * d * e, 2 * n * d * d),
        ("forward (bone_bat_linear)", lambda: op.bone_bat_linear(x, w, None, blk), 2 * n * d * e, 2 * n * d * d),
    ]
    rows = [(name, median_s(fn, device, reps), nbytes, flops) for name, fn, nbytes, flops in cases]
    report(f"bat parts N={n} {d}x{d} r={r} {dtype}", rows, limits, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small shapes (a smoke run on a CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    limits = measure_limits(device, [dtype], quick=args.small)
    n, d, reps = (512, 256, 5) if args.small else (8192, 4096, 50)
    for r in (16, 64):
        lora_parts(n, d, r, device, dtype, limits, reps)
    bat_parts(n, d, 64, device, dtype, limits, reps)


if __name__ == "__main__":
    main()

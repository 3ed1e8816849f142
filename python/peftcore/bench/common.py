"""Timing, hardware limits and result files shared by every benchmark family.

Rules (DESIGN.md): candidates alternate within one process, warm-up first,
medians of many repetitions, CUDA timed with events between back-to-back calls
(time_stream); inputs rotate between
several buffers so that small cases are not flattered by warm caches.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import mmap
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

try:  # minor page faults per call on the CPU (Unix only)
    import resource
except ImportError:  # pragma: no cover
    resource = None

# Where results go unless --out says otherwise: ./peftcore-bench-results/<machine>/ (the
# repository's bench/run.py points this at bench/results/, which bench/report.py reads).
RESULTS_DIR = Path("peftcore-bench-results")
# Multiplies every family's alternation rounds (`peftcore-bench --repeat K`): steadier
# medians on a machine whose speed drifts, at K times the run time.
ROUNDS_SCALE = 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def touch_fresh_mapping(size: int) -> None:
    """Maps `size` bytes of fresh anonymous memory, writes one byte per page, unmaps:
    every page faults in, whatever malloc has kept from earlier frees."""
    region = mmap.mmap(-1, size)
    try:
        for offset in range(0, size, mmap.PAGESIZE):
            region[offset] = 1
    finally:
        region.close()


@functools.lru_cache(maxsize=None)
def kernel_counts_page_faults() -> bool:
    """Whether getrusage reports minor faults here (some sandboxes report 0 for every
    process; the column is then left out rather than shown as 0)."""
    if resource is None:
        return False
    before = _minor_faults()
    touch_fresh_mapping(4 << 20)
    return _minor_faults() > before


def _time_once(fn: Callable[[], object]) -> float:
    """Wall seconds of one call on the CPU (CUDA calls are timed by time_stream)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_stream(fn: Callable[[], object], reps: int) -> list[float]:
    """Seconds per call of `reps` back-to-back calls on the current CUDA stream, one
    event between consecutive calls and one synchronisation at the end: the GPU's
    time per call while the CPU runs ahead, as in training, where the host enqueues
    the next layers' kernels while the GPU runs these. An untimed lead call first
    puts the host ahead; timing each call from an idle, synchronised GPU would add the
    host's launch path of every call (tens of microseconds for any autograd op) to
    every sample instead.
    """
    events = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
    fn()
    events[0].record()
    for i in range(reps):
        fn()
        events[i + 1].record()
    events[-1].synchronize()
    return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(reps)]


@dataclass
class Timing:
    median_s: float
    q1_s: float
    q3_s: float
    samples: int
    # CPU: mean minor page faults per call. Fresh large allocations fault their pages
    # back in (glibc returns freed blocks to the kernel): several ms per call at
    # N=4096, 1024^2 on this VM, and which candidate pays is chaotic (bench/README).
    faults_per_call: float = math.nan


def time_alternating(
    candidates: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int = 3,
    reps: int = 5,
    rounds: int = 5,
) -> dict[str, Timing]:
    """Times every candidate `rounds` x `reps` times (rounds x ROUNDS_SCALE), candidates
    interleaved per round."""
    rounds *= ROUNDS_SCALE
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    faults = dict.fromkeys(candidates, 0)
    for _ in range(rounds):
        for name, fn in candidates.items():
            if device.type == "cuda":
                samples[name].extend(time_stream(fn, reps))
                continue
            for _ in range(reps):
                before = _minor_faults()
                samples[name].append(_time_once(fn))
                faults[name] += _minor_faults() - before
    out = {}
    for name, xs in samples.items():
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        counted = device.type == "cpu" and kernel_counts_page_faults()
        per_call = faults[name] / len(xs) if counted else math.nan
        out[name] = Timing(statistics.median(xs), q[0], q[2], len(xs), per_call)
    return out


def timing_row(case: dict, device: torch.device, candidate: str, timing: Timing, **measures) -> dict:
    """One result row: the case's columns, the candidate with its median and spread
    (on the CPU also its page faults per call), then the family's own measures
    (ratios, rates, memory)."""
    row = {**case, "device": device.type, "candidate": candidate, "median_ms": timing.median_s * 1e3,
           "iqr_ms": (timing.q3_s - timing.q1_s) * 1e3}
    if not math.isnan(timing.faults_per_call):
        row["faults_per_call"] = timing.faults_per_call
    return {**row, **measures}


@dataclass
class Limits:
    bandwidth_gbs: float  # measured large copy, read + write bytes
    matmul_tflops: dict  # dtype name -> measured large-matmul rate


def measure_limits(device: torch.device, dtypes: list[torch.dtype], quick: bool) -> Limits:
    """The machine's own ceilings, measured in this run: a large copy and a large matmul."""
    n_bytes = (64 if quick else 1024) * 2**20 if device.type == "cpu" else 2 * 2**30
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_alternating({"copy": lambda: dst.copy_(src)}, device, warmup=2, reps=5, rounds=2)["copy"]
    bandwidth = 2 * n_bytes / t.median_s / 1e9
    rates = {}
    for dtype in dtypes:
        n = 2048 if device.type == "cpu" else 8192
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        t = time_alternating({"mm": lambda: a @ b}, device, warmup=2, reps=3, rounds=2)["mm"]
        rates[str(dtype).replace("torch.", "")] = 2 * n**3 / t.median_s / 1e12
    return Limits(bandwidth, rates)


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def write_results(family: str, device: torch.device, rows: list[dict], limits: Limits,
                  out_dir: Path | None = None) -> Path:
    """JSON (with the limits and environment) + CSV + Markdown, under results/<machine>/."""
    out_dir = out_dir or RESULTS_DIR / machine_name(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "family": family,
        "machine": machine_name(device),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "limits": {"bandwidth_gbs": limits.bandwidth_gbs, "matmul_tflops": limits.matmul_tflops},
        "rounds_scale": ROUNDS_SCALE,
    }
    (out_dir / f"{family}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if rows:
        with open(out_dir / f"{family}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (out_dir / f"{family}.md").write_text(markdown_table(rows, meta))
    return out_dir


def markdown_table(rows: list[dict], meta: dict) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = [
        f"{meta['family']} on {meta['machine']} (torch {meta['torch']}, {meta['date']}); "
        f"measured limits: copy {meta['limits']['bandwidth_gbs']:.1f} GB/s, matmul "
        + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in meta["limits"]["matmul_tflops"].items())
        + (f"; alternation rounds x{meta['rounds_scale']}" if meta.get("rounds_scale", 1) > 1 else ""),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)

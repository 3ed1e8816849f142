"""Benchmark runner: `python bench/run.py [--quick] [--ops lora,...] [--device cpu|cuda]`.

Measures the machine's limits once, runs each family, writes JSON/CSV/Markdown
under bench/results/<machine>/ and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_name, measure_limits, write_results  # noqa: E402

FAMILIES = {"lora": "bench_lora", "adapters": "bench_adapters", "optim": "bench_optim", "sparse": "bench_sparse"}


def progress_bar(items, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(list(items), desc=desc, leave=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CPU smoke set (< 2 minutes)")
    parser.add_argument("--ops", default=",".join(FAMILIES), help="comma-separated families")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default results/<machine>)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    limits = measure_limits(device, [dtype], args.quick)
    print(f"{machine_name(device)}: copy {limits.bandwidth_gbs:.1f} GB/s, matmul {limits.matmul_tflops}")
    failed = []
    for family in args.ops.split(","):
        if family not in FAMILIES:
            parser.error(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
        module = __import__(FAMILIES[family])
        try:
            rows = module.run(device, dtype, args.quick, limits, progress_bar)
        except Exception:  # one broken family must not cost the others (a GPU run is scarce)
            traceback.print_exc()
            failed.append(family)
            continue
        out_dir = write_results(family, device, rows, limits, args.out)
        print((out_dir / f"{family}.md").read_text())
    if failed:
        print(f"families that failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark runner: `peftcore-bench [--quick] [--ops lora,hydra,...] [--device cpu|cuda]`
(also `python -m peftcore.bench`, or `python bench/run.py` in the repository).

Measures the machine's limits once, runs each family, writes JSON/CSV/Markdown and
a PNG under <results>/<machine>/ and prints the tables.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

import torch

from . import common
from .common import machine_name, measure_limits, write_results
from .plots import plot_family

FAMILIES = {"lora": "bench_lora", "adapters": "bench_adapters", "optim": "bench_optim", "sparse": "bench_sparse",
            "masked": "bench_masked", "select": "bench_select"}
# Op names that the issue tracker and users use, mapped to the family that measures them.
ALIASES = {"hydra": "adapters", "bone": "adapters", "lamb": "optim", "lars": "optim"}


def progress_bar(items, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(list(items), desc=desc, leave=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftcore-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CPU smoke set (< 2 minutes)")
    parser.add_argument("--ops", default=None,
                        help="comma-separated: lora, adapters (= hydra, bone), optim (= lamb, lars), sparse, masked, "
                             "select; default: all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default {common.RESULTS_DIR}/<machine>)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="multiply every family's alternation rounds (steadier medians, K x the time)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    common.ROUNDS_SCALE = args.repeat

    device = torch.device(args.device)
    ops = args.ops or ",".join(FAMILIES)
    families = list(dict.fromkeys(ALIASES.get(f, f) for f in ops.split(",")))  # in order, once each
    for family in families:
        if family not in FAMILIES:
            parser.error(f"unknown family {family!r}; choose from {sorted(FAMILIES) + sorted(ALIASES)}")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    limits = measure_limits(device, [dtype], args.quick)
    print(f"{machine_name(device)}: copy {limits.bandwidth_gbs:.1f} GB/s, matmul {limits.matmul_tflops}")
    failed = []
    for family in families:
        module = importlib.import_module(f".{FAMILIES[family]}", __package__)
        try:
            rows = module.run(device, dtype, args.quick, limits, progress_bar)
        except Exception:  # one broken family must not cost the others (a GPU run is scarce)
            traceback.print_exc()
            failed.append(family)
            continue
        out_dir = write_results(family, device, rows, limits, args.out)
        print((out_dir / f"{family}.md").read_text())
        try:
            png = plot_family(out_dir / f"{family}.json")
            print(f"figure: {png}")
        except ImportError:  # matplotlib is optional (the bench extra installs it)
            print("matplotlib is not installed: no figure")
    if failed:
        print(f"families that failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


def cli() -> int:  # the peftcore-bench console script
    return main()


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m peftcore demo [--task sentiment|synthetic] [flags]`.

sentiment (the default, `make demo`): MiniLM-L6 fine-tuned with peftcore adapters on
sentence polarity, offline (peftcore.demo_sentiment). synthetic: a seconds-long
low-rank imitation task on a random MLP, no data needed (peftcore.demo_synthetic).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--task", choices=["sentiment", "synthetic"], default="sentiment")
    known, rest = parser.parse_known_args(argv)
    if known.task == "synthetic":
        from .demo_synthetic import main as run
    else:
        from .demo_sentiment import main as run
    return run(rest)

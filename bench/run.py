"""`python bench/run.py [flags]` in the repository: peftcore-bench with results under
bench/results/<machine>/ (what bench/report.py turns into the README's tables)."""

import sys
from pathlib import Path

from peftcore.bench import common
from peftcore.bench.run import main

common.RESULTS_DIR = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

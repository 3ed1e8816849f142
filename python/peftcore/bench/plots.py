"""The figure of a family's results: written next to its JSON by peftcore-bench and
by the repository's bench/report.py."""

from __future__ import annotations

import json
from pathlib import Path


def plot_family(path: Path):
    """One figure per family: each candidate's time relative to the first baseline of
    its case (lower is faster) and, where the rows have one, its share of the limit
    measured in the same run (the roofline view). Written next to the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    rows, meta = data["rows"], data["meta"]
    if not rows:
        return None
    case_keys = [k for k in ("shape", "set", "dropout") if k in rows[0]]
    if len({r["op"] for r in rows}) > 1:
        case_keys.insert(0, "op")

    def case_of(r) -> str:
        return " ".join(f"p={r[k]}" if k == "dropout" else str(r[k]) for k in case_keys)

    cases, candidates = [], []
    for r in rows:
        if case_of(r) not in cases:
            cases.append(case_of(r))
        if r["candidate"] not in candidates:
            candidates.append(r["candidate"])
    times = {(case_of(r), r["candidate"]): r["median_ms"] for r in rows}
    pct_col = next((c for c in rows[0] if c.startswith("pct_")), None)
    panels = 2 if pct_col else 1
    fig, axes = plt.subplots(1, panels, figsize=(panels * max(6, 1.6 * len(cases)), 4.2), squeeze=False)
    width = 0.8 / len(candidates)
    xs = range(len(cases))

    def bars(ax, value_of, ylabel):
        for i, cand in enumerate(candidates):
            ax.bar([x + i * width for x in xs], [value_of(c, cand) for c in cases], width, label=cand)
        ax.set_xticks([x + width * (len(candidates) - 1) / 2 for x in xs])
        ax.set_xticklabels(cases, rotation=15, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)

    ax = axes[0][0]
    bars(ax, lambda c, cand: times.get((c, cand), float("nan")) / times[(c, candidates[0])],
         f"median time / {candidates[0]} (lower is faster)")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_title(f"{meta['family']} on {meta['machine']} ({meta['date']}): speed")
    if pct_col:  # the roofline view: how close each candidate gets to the measured limit
        pct = {(case_of(r), r["candidate"]): r[pct_col] for r in rows}
        limit = "bandwidth (large copy)" if "bandwidth" in pct_col else "matmul rate (large GEMM)"
        ax = axes[0][1]
        bars(ax, lambda c, cand: pct.get((c, cand), float("nan")), f"% of the measured {limit}")
        ax.axhline(100.0, color="gray", linewidth=0.8)
        ax.set_title("share of the machine's limit (higher is better)")
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

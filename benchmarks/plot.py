"""Time-vs-L and memory-vs-L plots from a ``bench.py --lengths`` JSON.

    python benchmarks/plot.py benchmarks/results/cpu-sweep.json [--out docs/img]

Writes ``<prefix>-time.png`` (forward+backward median time, log-log) and
``<prefix>-memory.png`` (forward+backward peak memory), one panel per case
and one line per path. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def series(report: dict, metric: str, key: str) -> dict:
    """{case: {path: [(L, value), ...]}} for ``metric`` ("fwd"/"fwd_bwd") and ``key``."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for entry in report["results"]:
        for path in entry["paths"]:
            if metric in path:
                out[entry["case"]][path["path"]].append((entry["shapes"]["L"], path[metric][key]))
    return out


def plot(report: dict, metric: str, key: str, ylabel: str, out: Path, title: str):
    data = series(report, metric, key)
    cases = sorted(data)
    if not cases:
        return None
    cols = min(3, len(cases))
    rows = (len(cases) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        for path, points in sorted(data[case].items()):
            points.sort()
            style = "-o" if path.startswith("recurops") and "loop" not in path else "--s"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=path, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(case)
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(cases) :]:
        ax.axis("off")
    machine = report.get("machine", {})
    fig.suptitle(
        f"{title} - {machine.get('cpu', machine.get('processor', ''))}, "
        f"{machine.get('device', '')}, mlx {machine.get('mlx', '')}, {report.get('dtype', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--prefix", help="file name prefix (default: the JSON's stem)")
    args = parser.parse_args(argv)
    report = json.loads(args.results.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or args.results.stem
    for metric, key, label, suffix, title in [
        ("fwd_bwd", "median_ms", "forward+backward time (ms)", "time", "forward+backward time"),
        ("fwd_bwd", "peak_mb", "forward+backward peak memory (MB)", "memory", "peak memory"),
    ]:
        written = plot(report, metric, key, label, args.out / f"{prefix}-{suffix}.png", title)
        if written:
            print(f"wrote {written}")


if __name__ == "__main__":
    main()

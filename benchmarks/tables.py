"""Markdown tables (as in docs/kernels.md) from a GPU benchmark JSON.

    python benchmarks/tables.py benchmarks/results/gpu-h200.json
"""

from __future__ import annotations

import json
import math
import sys


def _ms(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def _spread(values) -> str:
    """``low-high`` of a row's rounds (runs before rounds have none)."""
    values = [v for v in values or () if not math.isnan(v)]
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else ""


def _mb(value: float | None) -> str:
    """Megabytes, blank where not measured (PyTorch peers, older runs)."""
    return "" if value is None else f"{value:.0f}"


def _ratio(value: float, floor: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value / floor:.0f}x"


def case_table(case: dict) -> str:
    floor_f, floor_t = case["floor_fwd_ms"], case["floor_fwd_bwd_ms"]
    name = case["case"].replace("mlx.core.", "")
    lines = [f"**{name}**: traffic floor {floor_f * 1e3:.1f} µs forward, "
             f"{floor_t * 1e3:.1f} µs forward+backward", "",
             "| implementation | fwd ms | fwd+bwd ms | fwd / floor | fwd+bwd / floor "
             "| training peak MB | working set MB | fwd+bwd ms over the rounds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in case["rows"]:
        lines.append(
            f"| {row['impl']} | {_ms(row['fwd_ms'])} | {_ms(row['fwd_bwd_ms'])} | "
            f"{_ratio(row['fwd_ms'], floor_f)} | {_ratio(row['fwd_bwd_ms'], floor_t)} | "
            f"{_mb(row.get('peak_MB'))} | {_mb(row.get('working_set_MB'))} | "
            f"{_spread(row.get('fwd_bwd_ms_rounds'))} |")
    return "\n".join(lines)


def memory_table(rows: list) -> str:
    lengths = sorted({r["L"] for r in rows})
    keys = sorted({(r["case"].split()[0], r["impl"]) for r in rows})
    lines = ["| kind | implementation | " + " | ".join(f"L={n}" for n in lengths) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in lengths) + " |"]
    for kind, impl in keys:
        peaks = {r["L"]: r["peak_MB"] for r in rows
                 if r["case"].split()[0] == kind and r["impl"] == impl}
        lines.append(f"| {kind} | {impl} | "
                     + " | ".join(f"{peaks[n]:.0f}" if n in peaks else "" for n in lengths)
                     + " |")
    return "\n".join(lines)


def main(path: str) -> None:
    with open(path) as f:
        results = json.load(f)
    print("\n\n".join(case_table(c) for c in results["cases"]))
    if "memory_sweep" in results:
        print("\nTraining peak MB against L\n")
        print(memory_table(results["memory_sweep"]))


if __name__ == "__main__":
    main(sys.argv[1])

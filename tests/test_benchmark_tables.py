"""``bench.py --markdown``: a results file of either mode as Markdown tables."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402


def _report(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def test_a_gpu_report_gives_a_table_a_case_with_every_row():
    report = _report("gpu-h100-32d5f21.json")
    text = bench.markdown(report)
    for case in report["cases"]:
        assert f"**{case['case'].replace('mlx.core.', '')}**" in text
        for row in case["rows"]:
            assert f"| {row['impl']} |" in text
    assert text.count("| implementation |") == len(report["cases"])


def test_a_cpu_report_gives_one_table():
    text = bench.markdown(_report("cpu-quick.json"))
    assert text.startswith("| case | L | path |")
    assert "**recurops fallback**" in text

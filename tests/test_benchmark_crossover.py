"""benchmarks/crossover.py: the shapes that check ``auto``'s crossover bracket
its bounds, and a round runs and reports (on the CPU with paths that run there)."""

import sys
from pathlib import Path

import mlx.core as mx

from recurops.kernels.chassis import LARGE_WORK, TILED_WORK

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import crossover  # noqa: E402


def test_shapes_bracket_both_bounds_and_count_updates_as_dispatch_does():
    found = crossover.cases()
    updates = sorted(case[3] for case in found)
    for bound in (TILED_WORK, LARGE_WORK):
        assert updates[0] < bound < updates[-1]
        assert sum(u < bound for u in updates) >= 2 and sum(u >= bound for u in updates) >= 2
    name, kind, inputs, count = next(case for case in found if case[1] == "ssd")
    x = inputs[0]  # [B, L, H, P] with N from B's last axis
    assert count == x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] * inputs[3].shape[-1]


def test_a_round_reports_both_paths_and_autos_choice(capsys):
    rows = crossover.run(crossover.cases(quick=True), rounds=1, repeats=1,
                         impls=("fallback", "reference"))
    assert [row["case"] for row in rows] == [case[0] for case in crossover.cases(quick=True)]
    on_gpu = mx.default_device().type == mx.DeviceType.gpu
    for row in rows:
        assert row["auto"] == ("kernel" if on_gpu else "fallback")  # the quick shapes are tiny
        assert len(row["fallback_ms"]) == len(row["reference_ms"]) == 1
        assert isinstance(row["auto_slower"], bool)
    assert "updates" in capsys.readouterr().out

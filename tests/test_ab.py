"""benchmarks/ab.py: an earlier revision's package, exported beside the working tree's,
runs in the same process with its kernels named apart."""

import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")


def test_prepared_revision_runs_beside_the_tree(tmp_path, monkeypatch):
    import ab

    monkeypatch.setattr(ab, "FOLDER", tmp_path)
    target = ab.prepare("HEAD")
    tag = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert target == tmp_path / f"recurops_{tag}"
    chassis = (target / "kernels" / "chassis.py").read_text()
    assert f'name=f"ab{tag}_' in chassis and ab.KERNEL_NAME not in chassis

    packages = ab.trees([tag])
    assert packages[tag].__name__ == f"recurops_{tag}"
    assert packages[tag].scan is not packages["tree"].scan
    a = mx.random.uniform(shape=(2, 9, 32))
    x = mx.random.normal((2, 9, 32))
    alive = []
    for name in ("peak_training_bytes", "working_set_bytes"):
        monkeypatch.setattr(ab.gpu, name, _noting_active_memory(getattr(ab.gpu, name), alive))
    rows = ab.run(packages, [("tiny rglru", "rglru", (a, x))], "fallback", rounds=1, repeats=1)
    assert [row["tree"] for row in rows] == ["tree", tag]
    assert rows[0]["gradient_difference"] == 0.0
    assert rows[1]["gradient_difference"] >= 0.0  # a number: both trees' gradients compared
    assert all(len(row["fwd_ms"]) == len(row["fwd_bwd_ms"]) == 1 for row in rows)
    # a training step holds at least its inputs, output and gradients, with or without a limit
    assert all(row["peak_bytes"] >= 3 * x.nbytes for row in rows)
    assert all(row["working_set_bytes"] >= 3 * x.nbytes for row in rows)
    # each tree's memory is measured with the same arrays alive (none of the
    # gradients held for the comparison)
    assert len(set(alive)) == 1, alive


def _noting_active_memory(measure, alive: list):
    def noted(train):
        mx.synchronize()
        alive.append(mx.get_active_memory())
        return measure(train)

    return noted

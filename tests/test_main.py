"""``python -m recurops``, the README's first command: every kind checked and timed."""

import sys

import mlx.core as mx
import pytest

from recurops import KINDS
from recurops import __main__ as main_job


def test_main_job_checks_every_kind(capsys):
    assert main_job.main() == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] for line in out.splitlines()[2:]}
    assert set(KINDS) <= rows
    assert "all kinds agree with the float64 reference" in out


@pytest.mark.skipif(not sys.platform.startswith("linux") or mx.default_device() != mx.cpu,
                    reason="the BLAS line is for Linux CPU runs")
@pytest.mark.parametrize("gflops,hint", [(2.5, True), (40.0, False)])
def test_main_job_names_a_slow_cpu_blas(gflops, hint, capsys, monkeypatch):
    monkeypatch.setattr(main_job, "_cpu_matmul_gflops", lambda: gflops)
    monkeypatch.setattr(main_job, "KINDS", {})  # the header lines only
    assert main_job.main() == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("CPU"))
    assert line.startswith(f"CPU float32 matmul: {gflops:.1f} GFLOP/s")
    assert ("preloading OpenBLAS" in line) == hint


def test_cpu_matmul_rate_is_measured():
    assert main_job._cpu_matmul_gflops(size=64) > 0

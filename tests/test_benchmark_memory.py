"""benchmarks/gpu.py's memory measures: the peak of a training step as it runs,
and its working set under a tight memory limit."""

import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gpu  # noqa: E402

ROWS = 1 << 18  # float32 values a part: 1 MB


def _parts_in_sequence(x, parts):
    """Eight rounds of temporaries over ``x``, each part made to wait for the
    part before (``mx.depends``): at most one part's buffers need to be alive."""
    sums, before = [], None
    for part in mx.split(x, parts):
        if before is not None:
            part = mx.depends([part], [before])[0]
        a = mx.exp(part)
        b = mx.sin(a)
        before = ((mx.cos(b) * a) + b).sum(keepdims=True)
        sums.append(before)
    return mx.concatenate(sums)


def test_working_set_keeps_only_the_live_buffers_and_restores_the_limit():
    parts = 8
    x = mx.random.normal((parts, ROWS))
    mx.eval(x)
    limit = mx.set_memory_limit(1 << 40)
    mx.set_memory_limit(limit)

    def train():
        mx.eval(_parts_in_sequence(x, parts))

    held = mx.get_active_memory()  # x
    working = gpu.working_set_bytes(train) - held
    part_bytes = ROWS * 4
    # three temporaries of a part alive at once, and at most two parts' worth of the
    # eight parts' 24 (MLX checks its limit after an allocation, not before)
    assert 3 * part_bytes <= working <= 2 * 3 * part_bytes
    assert mx.set_memory_limit(limit) == limit  # the limit in force is the caller's again
    assert gpu.peak_training_bytes(train) - held >= working

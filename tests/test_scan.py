"""The associative scan of the diagonal fallbacks (``recurops.fallback.scan``)."""

import mlx.core as mx
import numpy as np
import pytest

from recurops.fallback import scan


def _step_by_step(a, b, h0):
    """``h[t] = a[t] h[t-1] + b[t]`` one step at a time (complex as (re, im) pairs)."""
    h, out = h0, []
    for t in range(b[0].shape[1]):
        at, bt = tuple(x[:, t] for x in a), tuple(x[:, t] for x in b)
        h = scan._add(scan._mul(at, h), bt)
        out.append(h)
    return tuple(mx.stack(parts, axis=1) for parts in zip(*out))


@pytest.mark.parametrize("parts", [1, 2], ids=["real", "complex"])
def test_scan_matches_steps_and_makes_no_empty_arrays(parts, monkeypatch):
    """Values and gradients against a step-by-step loop at every length from
    1, with no empty slice on the way, forward or backward: MLX's CUDA
    backend has died with SIGFPE on work over arrays of size 0."""
    empty = []
    original = scan._slice

    def watched(x, axis, *bounds):
        out = original(x, axis, *bounds)
        if out.size == 0:
            empty.append((x.shape, axis, bounds))
        return out

    def loss(fn, *args):
        a, b, h0 = args[:parts], args[parts:2 * parts], args[2 * parts:]
        return sum((x * x).sum() for x in fn(a, b, h0))

    def by_scan(a, b, h0):
        h = scan.linear_scan(*((a, b, h0) if parts == 2 else (a[0], b[0], h0[0])))
        return h if parts == 2 else (h,)

    monkeypatch.setattr(scan, "_slice", watched)
    argnums = list(range(3 * parts))
    for length in range(1, 40):
        args = [*(mx.random.uniform(-1, 1, (2, length, 3)) for _ in range(parts)),
                *(mx.random.normal((2, length, 3)) for _ in range(parts)),
                *(mx.random.normal((2, 3)) for _ in range(parts))]
        got = mx.value_and_grad(lambda *x: loss(by_scan, *x), argnums)(*args)
        want = mx.value_and_grad(lambda *x: loss(_step_by_step, *x), argnums)(*args)
        for g, w in zip([got[0], *got[1]], [want[0], *want[1]], strict=True):
            np.testing.assert_allclose(np.array(g), np.array(w), rtol=1e-4, atol=1e-4)
    assert not empty, empty[:3]

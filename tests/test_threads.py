"""CPU thread splitting: the fallback's independent rows and channels, split
over CPU streams, give bit-identical values to one stream, and the same
gradients up to the order in which the parts' gradients of shared inputs
(``s6``'s ``B`` and ``C``, ``ssd``'s ``A``) are summed."""

import mlx.core as mx
import numpy as np
import pytest
from cases import cotangents, draw_call, relative_error, run_vjp
from hypothesis import given
from hypothesis import strategies as st

from recurops.fallback import threads


@pytest.mark.parametrize("kind", ["s6", "rglru", "rotlru", "ssd", "gla"])
@given(data=st.data())
def test_split_over_threads_is_exact(kind, data):
    call = data.draw(draw_call(kind, data.draw(st.sampled_from([mx.float32, mx.bfloat16]))),
                     label="call")
    parts = data.draw(st.integers(2, 5), label="threads")
    cotangent = cotangents(call, np.random.default_rng(0))
    with mx.stream(mx.cpu), pytest.MonkeyPatch.context() as env:
        env.setenv("RECUROPS_CPU_THREADS", "1")
        one = run_vjp(call, "fallback", cotangent)
        env.setenv("RECUROPS_CPU_THREADS", str(parts))
        split = run_vjp(call, "fallback", cotangent)
    (outputs, grads), (split_outputs, split_grads) = one, split
    for a, b in zip(outputs, split_outputs, strict=True):
        assert np.array_equal(np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32)))
    rounding = 2.0**-7 if call.inputs[0].dtype == mx.bfloat16 else 1e-6
    for a, b in zip(grads, split_grads, strict=True):
        assert relative_error(b, a) <= rounding


def test_split_runs_each_part_on_its_own_stream():
    seen = []

    def part(x):
        seen.append(mx.default_stream(mx.cpu))
        return (x * 2,)

    with mx.stream(mx.cpu):
        x = mx.arange(10)
        (y,) = threads.split(part, (x,), 10, lambda xs, lo, hi: (xs[0][lo:hi],),
                             lambda _, outs: mx.concatenate(outs))
    assert y.tolist() == [2 * i for i in range(10)]
    assert len(seen) == min(threads.cpu_threads(), 10) and len(set(map(str, seen))) == len(seen)

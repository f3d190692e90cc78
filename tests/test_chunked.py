"""The chunked fallback's GPU and CPU forms.

On a GPU, ``scalar_chunked`` passes chunk states by one matmul with the
chunk-level decays and keeps tiny decay factors; elsewhere it passes them by
a blocked associative scan and flushes factors below 2^-63 to zero. CI has no
GPU, so each form is forced here and checked against SPEC section 3 (values
and every gradient) for the kinds that use the chunked form.
"""

import mlx.core as mx
import numpy as np
import pytest
from cases import TOLERANCE, cotangents, draw_call, run, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from test_paths import assert_gradients_match, assert_matches_spec

from recurops.fallback import scalar_chunked

seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(params=[True, False], ids=["gpu-form", "cpu-form"])
def state_passing(request, monkeypatch):
    """The GPU's chunked form (matmul state passing, no flush) or the CPU's."""
    monkeypatch.setattr(scalar_chunked, "_by_matmul", lambda steps: request.param)
    monkeypatch.setattr(scalar_chunked, "_flushes", lambda: not request.param)


@pytest.mark.usefixtures("state_passing")
@pytest.mark.parametrize("kind", ["ssd", "gla"])
@given(data=st.data())
def test_chunk_state_passing_matches_spec(kind, data):
    call = data.draw(draw_call(kind, mx.float32), label="call")
    assert_matches_spec(call, *run(call, "fallback"), TOLERANCE[mx.float32])
    seed = data.draw(seeds, label="seed")
    cotangent = cotangents(call, np.random.default_rng(seed))
    _, grads = run_vjp(call, "fallback", cotangent)
    assert_gradients_match(call, grads, cotangent, TOLERANCE[mx.float32], seed + 1)

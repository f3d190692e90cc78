"""Fused kernels against the float64 reference and the fallback.

These run where MLX has a GPU (Metal or CUDA) and skip elsewhere, so CI on
a CPU stays green; the device machine runs them on an H100 or H200.
"""

import zlib

import mlx.core as mx
import numpy as np
import pytest
from cases import TOLERANCE
from kernel_cases import (
    auto_path,
    kernel_inputs,
    plan_spans,
    probe,
    relative_errors,
    value_and_grads,
)

import recurops
from recurops._api import gpu_backend
from recurops.kernels import spans

pytestmark = pytest.mark.skipif(gpu_backend() is None, reason="no Metal or CUDA GPU")

CASES = [
    # kind, batch, L, dims, per_channel
    ("rglru", (2,), 77, {"D": 45}, False),
    ("rglru", (), 1, {"D": 64}, False),
    ("rotlru", (2, 2), 70, {"P": 33}, False),
    ("s6", (3,), 65, {"D": 40, "N": 16}, False),
    ("s6", (1,), 33, {"D": 64, "N": 5}, False),
    ("ssd", (2,), 70, {"H": 4, "P": 40, "N": 16, "G": 2}, False),
    ("ssd", (1,), 37, {"H": 2, "P": 64, "N": 64, "G": 1}, True),
    ("ssd", (2,), 40, {"H": 2, "P": 16, "N": 128, "G": 1}, False),
    ("gla", (2,), 70, {"H": 3, "K": 16, "V": 40}, False),
    ("gla", (1,), 45, {"H": 2, "K": 24, "V": 33}, True),
    ("gla", (2,), 20, {"H": 2, "K": 128, "V": 64}, False),
    ("ssd", (1,), 600, {"H": 2, "P": 32, "N": 64, "G": 1}, False),  # three 256-step spans
    ("ssd", (2,), 45, {"H": 3, "P": 24, "N": 12, "G": 3}, True),  # 4 lanes a row, 3 warps a head
    ("ssd", (2,), 45, {"H": 2, "P": 8, "N": 17, "G": 1}, False),  # 17 values a lane: SEG 4
    ("gla", (2,), 45, {"H": 2, "K": 17, "V": 24}, False),  # 17 values a lane: SEG 4
    ("gla", (1,), 600, {"H": 2, "K": 64, "V": 32}, True),  # three spans
]


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("impl", ["kernel", "kernel, spans one after another",
                                  "kernel, the backward's spans side by side", "fallback"])
@pytest.mark.parametrize("kind,batch,length,dims,per_channel", CASES)
def test_gpu_path_matches_reference(kind, batch, length, dims, per_channel, impl, dtype,
                                    monkeypatch):
    """Outputs, final state and every gradient on the GPU against float64.
    The first kernel row runs the spans of the kinds in
    ``spans.SMALL_LAUNCH`` side by side (kernels/spans.py; these small
    launches would over long sequences), the second one after another, as
    large launches do, the third the backward's side by side after a
    forward one after another (``spans.BACKWARD_LAUNCH``)."""
    if (impl.startswith("kernel, the backward's") and kind in spans.CHECKPOINT_A_SPAN
            and length <= spans.SPAN):
        pytest.skip(f"{kind}'s backward keeps the forward's {spans.SPAN}-step spans: one span")
    if impl != "fallback":
        plan_spans(monkeypatch, forward=impl == "kernel",
                   backward=impl != "kernel, spans one after another")
        impl = "kernel"
    rng = np.random.default_rng(zlib.crc32(f"{kind}-{length}".encode()))
    host = kernel_inputs(kind, rng, batch, length, dims, per_channel)
    arrays = tuple(mx.array(x).astype(dtype) for x in host)
    state, wy, ws = probe(kind, arrays, rng)
    assert recurops.explain(kind, *arrays, state=state).path == auto_path(kind, length)

    got = value_and_grads(kind, arrays, state, impl, wy, ws)
    with mx.stream(mx.cpu):
        exact = value_and_grads(
            kind, tuple(x.astype(mx.float64) for x in arrays), state.astype(mx.float64),
            "reference", wy.astype(mx.float64), ws.astype(mx.float64),
        )
    errors = relative_errors(kind, got, exact)
    assert max(errors.values()) < TOLERANCE[dtype], errors


def _kernel_matches_reference_fp32(kind, batch, length, dims, per_channel, seed, slow=False):
    """The kernel path's outputs, final state and gradients in float32 against float64."""
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    host = kernel_inputs(kind, rng, batch, length, dims, per_channel, slow_decays=slow)
    arrays = tuple(mx.array(x) for x in host)
    state, wy, ws = probe(kind, arrays, rng)
    got = value_and_grads(kind, arrays, state, "kernel", wy, ws)
    with mx.stream(mx.cpu):
        exact = value_and_grads(
            kind, tuple(x.astype(mx.float64) for x in arrays), state.astype(mx.float64),
            "reference", wy.astype(mx.float64), ws.astype(mx.float64),
        )
    errors = relative_errors(kind, got, exact)
    assert max(errors.values()) < TOLERANCE[mx.float32], errors


@pytest.mark.parametrize("kind,batch,length,dims,per_channel",
                         [case for case in CASES if case[0] in spans.SMALL_LAUNCH and case[2] > 64])
def test_spans_side_by_side_with_slow_decays(kind, batch, length, dims, per_channel, monkeypatch):
    """Spans side by side with every decay near 1 (``kernel_inputs(...,
    slow_decays=True)``), so each span's decay product and the state or carry
    it hands on weigh on every output and gradient."""
    monkeypatch.setattr(spans, "MIN_LENGTH", 0)
    _kernel_matches_reference_fp32(kind, batch, length, dims, per_channel,
                                   f"{kind}-{length}-slow", slow=True)


@pytest.mark.parametrize("span", [256, 128, 64])
@pytest.mark.parametrize("kind,batch,length,dims,per_channel", [
    ("ssd", (1,), 600, {"H": 2, "P": 32, "N": 64, "G": 1}, False),
    ("gla", (1,), 600, {"H": 2, "K": 64, "V": 32}, True),
    ("rglru", (2,), 700, {"D": 45}, False),
    ("s6", (1,), 650, {"D": 40, "N": 16}, False),
    ("rotlru", (1,), 650, {"P": 33}, False),
])
def test_longer_spans_side_by_side(kind, batch, length, dims, per_channel, span, monkeypatch):
    """Spans side by side of every length the plan takes at large shapes
    (up to 256 steps), not only the 32 steps of the small cases above."""
    monkeypatch.setattr(spans, "MIN_LENGTH", 0)
    monkeypatch.setattr(spans, "SPANS", (span,))
    _kernel_matches_reference_fp32(kind, batch, length, dims, per_channel,
                                   f"{kind}-{length}-{span}")


@pytest.mark.parametrize("kind,dims", [("ssd", {"H": 2, "P": 32, "N": 16, "G": 1}),
                                        ("gla", {"H": 2, "K": 16, "V": 32})])
def test_new_batch_or_length_compiles_no_new_kernel(kind, dims):
    """Once a short and a long call ran (spans side by side, and their
    passes), new batches and lengths, and spans of other lengths, compile
    nothing."""
    from recurops.kernels.chassis import COMPILED

    rng = np.random.default_rng(0)

    def train(batch, length):
        arrays = tuple(mx.array(t) for t in kernel_inputs(kind, rng, batch, length, dims))
        mx.eval(mx.grad(lambda *a: recurops.scan(kind, *a, impl="kernel")[0].sum())(*arrays))

    train((1,), 5)
    train((1,), 600)
    compiled = set(COMPILED)
    for batch, length in (((3,), 17), ((2,), 3000), ((4,), 64), ((1,), 2000)):
        train(batch, length)
    assert COMPILED == compiled

"""The shipped kernel sources, run on the CPU in both dialects, against the fallback.

``recurops.testing.simulate("cuda" | "metal")`` makes ``impl="kernel"`` render
each kernel body in that dialect, wrap it the way MLX does, compile it with the
system C++ compiler and run its grid on CPU threads with 32-lane warps whose
reductions are lockstep (docs/kernel-simulation.md). So these tests run in CI,
without a GPU, the exact forward and backward kernel bodies the library ships,
and hold their outputs, final states and gradients to the fallback's.
"""

import sys
import zlib

import mlx.core as mx
import numpy as np
import pytest
from cases import TOLERANCE
from hypothesis import given
from hypothesis import strategies as st
from kernel_cases import (
    auto_path,
    kernel_inputs,
    plan_spans,
    probe,
    relative_errors,
    value_and_grads,
)

import recurops
from recurops.kernels import chassis, spans
from recurops.testing import Kernel, SimulationError, simulate

# Runs wherever POSIX ucontext exists; a missing C++ compiler there is a failure, not a skip,
# so CI can never pass without running the kernel sources.
pytestmark = pytest.mark.skipif(sys.platform not in ("linux", "darwin"),
                                reason="the kernel simulator needs POSIX ucontext")

DIALECTS = ("cuda", "metal")
SIDE_BY_SIDE = tuple(spans.SMALL_LAUNCH)  # kinds whose kernels can run spans side by side


# Small shapes, each with several checkpoint segments and an odd tail (SEG is
# 32, or 16 for larger state widths; ssd and gla store a checkpoint every 256
# steps, or every 32 with their spans side by side, and recompute SEG-step
# pieces), batch > 1 (or two batch dims), lane dimensions that are not a
# multiple of 32 (a partial warp), and an initial state.
CASES = [
    # kind, batch, L, dims, per_channel
    ("rglru", (2,), 70, {"D": 45}, False),
    ("rotlru", (2, 2), 70, {"P": 19}, False),
    ("s6", (2,), 70, {"D": 40, "N": 4}, False),  # SEG 32: 3 segments, 4 lanes a row
    ("s6", (3,), 37, {"D": 33, "N": 17}, False),  # SEG 16: 3 segments, 1 lane a row
    ("s6", (2,), 45, {"D": 12, "N": 16}, False),  # 8 lanes a row, 3 warps a batch row
    ("ssd", (2,), 70, {"H": 4, "P": 40, "N": 6, "G": 2}, False),  # A per head, 2 lanes a row
    ("ssd", (2,), 37, {"H": 2, "P": 33, "N": 35, "G": 1}, True),  # A per channel, SEG 4
    ("ssd", (2,), 37, {"H": 2, "P": 33, "N": 36, "G": 1}, True),  # A per channel, 4 lanes a row
    ("ssd", (1,), 300, {"H": 2, "P": 8, "N": 16, "G": 1}, False),  # two spans, 8 lanes a row
    ("ssd", (2,), 3, {"H": 2, "P": 8, "N": 4, "G": 1}, False),  # shorter than one input tile
    ("ssd", (2,), 37, {"H": 2, "P": 8, "N": 64, "G": 1}, False),  # backward: 16 lanes a row
    ("gla", (2,), 70, {"H": 2, "K": 16, "V": 40}, False),  # one gate per head, 8 lanes a column
    ("gla", (2,), 37, {"H": 2, "K": 6, "V": 33}, True),  # one gate per key channel, 2 lanes
    ("gla", (1,), 300, {"H": 2, "K": 5, "V": 8}, True),  # two 256-step spans, 1 lane
    ("gla", (2,), 5, {"H": 2, "K": 16, "V": 8}, True),  # shorter than one input tile
    ("gla", (2,), 37, {"H": 1, "K": 64, "V": 8}, False),  # backward: 16 lanes a column
    ("gla", (2,), 45, {"H": 2, "K": 17, "V": 8}, False),  # 17 values a lane: SEG 4
]
BF16_CASES = [
    ("rglru", (2,), 40, {"D": 45}, False),
    ("ssd", (2,), 37, {"H": 2, "P": 33, "N": 4, "G": 1}, False),
    ("gla", (2,), 37, {"H": 2, "K": 6, "V": 33}, True),
]


def _compare(dialect, kind, batch, length, dims, per_channel, dtype, side_by_side=False,
             slow_decays=False):
    """Kernel against fallback; ``side_by_side`` runs the spans of the kinds
    in ``SIDE_BY_SIDE`` side by side wherever there are several
    (kernels/spans.py), ``"backward"`` only the backward's (the kinds of
    ``spans.BACKWARD_LAUNCH``), otherwise one after another; ``slow_decays``
    keeps every decay near 1."""
    rng = np.random.default_rng(zlib.crc32(f"{kind}{batch}{length}{dims}".encode()))
    host = kernel_inputs(kind, rng, batch, length, dims, per_channel, slow_decays)
    arrays = tuple(mx.array(x).astype(dtype) for x in host)
    state, wy, ws = probe(kind, arrays, rng)

    expected = value_and_grads(kind, arrays, state, "fallback", wy, ws)
    with simulate(dialect) as sim, pytest.MonkeyPatch.context() as patch:
        forward, backward = (side_by_side is True), bool(side_by_side)
        plan_spans(patch, forward, backward)
        assert recurops.explain(kind, *arrays, state=state).path == auto_path(kind, length)
        got = value_and_grads(kind, arrays, state, "kernel", wy, ws)
    # the forward and backward kernel sources ran, in this dialect; and the
    # passes of spans side by side where there are several
    launched = {f"{kind}_fwd", f"{kind}_bwd"}
    passes = "rotlru_pass" if kind == "rotlru" else "chunk_states"
    if forward and length > spans.SPANS[-1]:
        launched |= {f"{kind}_ends", passes}
    # a backward of its own keeps the forward's 256-step spans where checkpoints follow spans
    own_spans = not forward and kind in spans.CHECKPOINT_A_SPAN
    if backward and length > (spans.SPAN if own_spans else spans.SPANS[-1]):
        launched |= {f"{kind}_carries", passes}
    assert {launch.name for launch in sim.launches} == launched
    assert all(launch.wrapped.dialect == dialect for launch in sim.launches)

    errors = relative_errors(kind, got, expected)
    assert max(errors.values()) < TOLERANCE[dtype], errors


def _with_spans(cases):
    """Each case, and each case of a kind in ``SIDE_BY_SIDE`` once more with
    its spans side by side."""
    return [(*case, False) for case in cases] + [
        (*case, True) for case in cases if case[0] in SIDE_BY_SIDE]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind,batch,length,dims,per_channel,side_by_side", _with_spans(CASES))
def test_kernel_matches_fallback(dialect, kind, batch, length, dims, per_channel, side_by_side):
    """Outputs, final state and every gradient of the simulated kernels, float32."""
    _compare(dialect, kind, batch, length, dims, per_channel, mx.float32, side_by_side)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind,batch,length,dims,per_channel,side_by_side",
                         _with_spans(BF16_CASES))
def test_kernel_matches_fallback_bfloat16(dialect, kind, batch, length, dims, per_channel,
                                          side_by_side):
    """bfloat16 inputs: the kernels read ``T = bfloat16`` (emulated, round to nearest even)."""
    _compare(dialect, kind, batch, length, dims, per_channel, mx.bfloat16, side_by_side)


@pytest.mark.parametrize("span", [256, 128, 64])
@pytest.mark.parametrize("kind,batch,length,dims,per_channel", [
    ("ssd", (1,), 300, {"H": 2, "P": 8, "N": 16, "G": 1}, False),  # pieces of 32 steps
    ("gla", (1,), 300, {"H": 1, "K": 17, "V": 8}, True),  # pieces of 4 steps
    ("rglru", (1,), 300, {"D": 33}, False),
    ("s6", (1,), 300, {"D": 12, "N": 16}, False),
    ("rotlru", (1,), 300, {"P": 19}, False),
])
def test_longer_spans_side_by_side(kind, batch, length, dims, per_channel, span, monkeypatch):
    """Spans side by side of every length the plan may take, not only the
    32 steps these small launches get."""
    monkeypatch.setattr(spans, "SPANS", (span,))
    _compare("cuda", kind, batch, length, dims, per_channel, mx.float32, side_by_side=True)


@pytest.mark.parametrize("kind,batch,length,dims,per_channel",
                         [case for case in CASES if case[0] in SIDE_BY_SIDE and case[2] > 64])
def test_spans_side_by_side_with_slow_decays(kind, batch, length, dims, per_channel):
    """Decays near 1, so each span's product of decays and the state (or the
    carry) it hands the next span weigh on every output and gradient."""
    _compare("cuda", kind, batch, length, dims, per_channel, mx.float32, side_by_side=True,
             slow_decays=True)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind,batch,length,dims,per_channel", [
    case for case in CASES
    if case[0] not in spans.CHECKPOINT_A_SPAN or case[2] > spans.SPAN])
def test_backward_spans_side_by_side_after_a_forward_one_after_another(
        dialect, kind, batch, length, dims, per_channel):
    """The backward plans its spans apart from the forward
    (``spans.BACKWARD_LAUNCH``): a backward with spans side by side from a
    forward's checkpoints made one span after another (for ``ssd`` and
    ``gla``, whose checkpoints follow the spans, 256-step spans)."""
    _compare(dialect, kind, batch, length, dims, per_channel, mx.float32, side_by_side="backward")


@pytest.mark.parametrize("kind,dims", [("ssd", {"H": 2, "P": 8, "N": 16, "G": 1}),
                                        ("s6", {"D": 12, "N": 16})])
def test_new_lengths_compile_no_new_kernel(kind, dims):
    """Spans one after another and side by side are two variants of each
    kernel (``spans.baked``): once a short and a long call ran, new batches
    and lengths, in either mode, compile nothing."""
    rng = np.random.default_rng(0)

    def train(batch, length):
        arrays = tuple(mx.array(t) for t in kernel_inputs(kind, rng, batch, length, dims))
        mx.eval(mx.grad(lambda *a: recurops.scan(kind, *a, impl="kernel")[0].sum())(*arrays))

    with simulate("cuda"):
        train((1,), 5)
        train((1,), 600)
        compiled = set(chassis.COMPILED)
        for batch, length in (((3,), 17), ((2,), 1100), ((4,), 64), ((1,), 700)):
            train(batch, length)
    assert chassis.COMPILED == compiled
    modes = {dict(template)["SIDE_BY_SIDE"] for name, template in compiled
             if name == f"{kind}_bwd"}
    assert modes == {0, 1}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_length_one_and_single_segment(dialect):
    """Decoding shapes: L = 1 (one partial segment), no batch dimension."""
    _compare(dialect, "s6", (), 1, {"D": 32, "N": 3}, False, mx.float32)


# ---- the executor's execution model -------------------------------------------------------

def _kernel(body, dialect, inputs=("inp",), outputs=("out",)):
    header, source = chassis.render(body, dialect)
    return Kernel("probe", inputs, outputs, source, header, dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_warp_sum_and_thread_positions(dialect):
    body = """
        const int tid = THREAD_ID;
        const float s = WARP_SUM(inp[tid]);
        out[tid] = s;
        lane[tid] = LANE_ID;
    """
    k = _kernel(body, dialect, outputs=("out", "lane"))
    x = np.arange(128, dtype=np.float32)
    out, lane = k(inputs=[x], output_shapes=[(128,), (128,)],
                  output_dtypes=[np.float32, np.int32], grid=(128, 1, 1),
                  threadgroup=(64, 1, 1))
    warps = x.reshape(4, 32)
    np.testing.assert_array_equal(out, np.repeat(warps.sum(1), 32))
    np.testing.assert_array_equal(lane, np.tile(np.arange(32), 4))


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("first,last", [(1, 4), (8, 16), (1, 0)])
def test_lane_sum_adds_over_the_named_lane_bits(dialect, first, last):
    """LANE_SUM(v, first, last): the sum over the lanes whose index differs from
    this lane's only in the bits first..last (none when first > last)."""
    body = f"const int tid = THREAD_ID; out[tid] = LANE_SUM(inp[tid], {first}, {last});"
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    (out,) = _kernel(body, dialect)(inputs=[x], output_shapes=[(64,)],
                                    output_dtypes=[np.float32], grid=(64, 1, 1),
                                    threadgroup=(64, 1, 1))
    bits = sum(b for b in (1, 2, 4, 8, 16) if first <= b <= last)
    lanes = np.arange(64)
    expected = [x[(lanes & ~bits) == (i & ~bits)].sum() for i in lanes]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_cuda_runs_whole_blocks_metal_clips_to_the_grid():
    """A grid of 96 threads in groups of 128: CUDA launches a full block, Metal 96 threads."""
    body = "const int tid = THREAD_ID; if (tid < 128) out[tid] = 1.0f;"
    grid = dict(output_shapes=[(128,)], output_dtypes=[np.float32], grid=(96, 1, 1),
                threadgroup=(128, 1, 1))
    dummy = np.zeros(1, np.float32)
    (cuda,) = _kernel(body, "cuda")(inputs=[dummy], **grid)
    (metal,) = _kernel(body, "metal")(inputs=[dummy], **grid)
    assert (cuda == 1).all()
    assert (metal[:96] == 1).all() and np.isnan(metal[96:]).all()  # never written


@pytest.mark.parametrize("dialect", DIALECTS)
def test_lane_leaving_before_a_reduction_is_an_error(dialect):
    """A lane that returns while the rest of its warp reaches WARP_SUM: error, no hang."""
    body = """
        const int tid = THREAD_ID;
        if (LANE_ID == 3) return;
        out[tid] = WARP_SUM(inp[tid]);
    """
    x = np.ones(64, np.float32)
    with pytest.raises(SimulationError, match=r"lane\(s\) 3 returned while lane\(s\) 0,1,2,4"):
        _kernel(body, dialect)(inputs=[x], output_shapes=[(64,)],
                               output_dtypes=[np.float32], grid=(64, 1, 1),
                               threadgroup=(64, 1, 1))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_whole_warp_returning_is_fine(dialect):
    body = """
        const int tid = THREAD_ID;
        if (tid >= 32) return;  // the second warp leaves as a whole
        out[tid] = WARP_SUM(inp[tid]);
    """
    x = np.ones(64, np.float32)
    (out,) = _kernel(body, dialect)(inputs=[x], output_shapes=[(32,)],
                                    output_dtypes=[np.float32], grid=(64, 1, 1),
                                    threadgroup=(64, 1, 1))
    assert (out == 32).all()


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("statement,access", [
    ("out[tid + 1] = inp[tid];", r"thread \(31, 0, 0\) accessed out\[32\]"),
    ("out[tid] = inp[tid + 100000];", r"thread \(0, 0, 0\) accessed inp\[100000\]"),
    ("out[tid] = inp[tid - 1];", r"thread \(0, 0, 0\) accessed inp\[-1\]"),
    ("out[tid * 1000] = 1.0f;", r"thread \(1, 0, 0\) accessed out\[1000\]"),
])
def test_out_of_bounds_access_is_an_error(dialect, statement, access):
    """Reads and writes outside a buffer, near its ends or far away (past any
    guard bytes), name the buffer, the index and the thread."""
    body = "const int tid = THREAD_ID; " + statement
    x = np.ones(32, np.float32)
    with pytest.raises(SimulationError, match=access + ", outside its 32 elements"):
        _kernel(body, dialect)(inputs=[x], output_shapes=[(32,)],
                               output_dtypes=[np.float32], grid=(32, 1, 1),
                               threadgroup=(32, 1, 1))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_kernel_breaking_the_whole_warp_invariant_fails(dialect, monkeypatch):
    """The ssd backward kernel with its idle lanes (p >= P) leaving early: an error, not a hang."""
    from dataclasses import replace

    from recurops.kernels import ssd

    guard = "if (idle || bh >= B * H) return;"
    assert guard in ssd.BACKWARD.body
    broken = replace(ssd.BACKWARD, body=ssd.BACKWARD.body.replace(
        guard, "if (idle || bh >= B * H || !active) return;"))
    monkeypatch.setattr(ssd, "BACKWARD", broken)
    rng = np.random.default_rng(0)
    dims = {"H": 2, "P": 40, "N": 3, "G": 1}
    arrays = tuple(mx.array(x) for x in kernel_inputs("ssd", rng, (1,), 5, dims, False))
    with simulate(dialect), pytest.raises(SimulationError, match="returned while lane"):
        mx.eval(mx.grad(lambda *a: recurops.scan("ssd", *a, impl="kernel")[0].sum())(*arrays))


# ---- drawn shapes ---------------------------------------------------------------------------

_ROW = st.sampled_from([1, 3, 4, 6, 8, 12, 16, 20, 24, 32])  # 1, 2, 4 and 8 lanes a state row
_WIDTH = st.integers(1, 40)  # rows a head: partial warps, several warps


def _draw_dims(kind, draw):
    if kind == "ssd":
        groups = draw(st.sampled_from([1, 2]))
        return {"H": groups * draw(st.integers(1, 2)), "P": draw(_WIDTH), "N": draw(_ROW),
                "G": groups}
    if kind == "gla":
        return {"H": draw(st.integers(1, 2)), "K": draw(_ROW), "V": draw(_WIDTH)}
    if kind == "s6":
        return {"D": draw(_WIDTH), "N": draw(_ROW)}
    if kind == "rglru":
        return {"D": draw(st.integers(1, 70))}
    return {"P": draw(_WIDTH)}


@pytest.mark.parametrize("kind", ["ssd", "gla", "s6", "rglru", "rotlru"])
@given(data=st.data())
def test_drawn_shapes_match_fallback(kind, data):
    """Hypothesis draws the dialect, batch dims (none to two), the length
    (from 1, over several segments), head and state sizes that give every
    lane split and partial warps, the decay shape, the dtype and whether
    spans run side by side (in the forward and the backward, or in the
    backward only)."""
    dialect = data.draw(st.sampled_from(DIALECTS), label="dialect")
    batch = tuple(data.draw(st.lists(st.integers(1, 2), max_size=2), label="batch"))
    length = data.draw(st.integers(1, 70), label="length")
    dims = _draw_dims(kind, data.draw)
    per_channel = kind in ("ssd", "gla") and data.draw(st.booleans(), label="per_channel")
    dtype = data.draw(st.sampled_from([mx.float32, mx.bfloat16]), label="dtype")
    side_by_side = kind in SIDE_BY_SIDE and data.draw(st.sampled_from([False, True, "backward"]),
                                                      label="side_by_side")
    _compare(dialect, kind, batch, length, dims, per_channel, dtype, side_by_side)

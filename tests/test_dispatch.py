"""Dispatch on a GPU backend (simulated on the CPU): measured crossovers."""

import functools

import mlx.core as mx
import pytest

import recurops
from recurops.kernels import spans
from recurops.kernels.chassis import (
    LARGE_STATE,
    LARGE_WORK,
    backward_split,
    large_state_crossover,
)
from recurops.testing import simulate


def test_crossover_only_for_large_states_over_long_sequences():
    ssd_big = {"P": 64, "N": 128, "L": 2048}
    assert large_state_crossover(ssd_big, "P", "N", 16, heads=8 * 32) is not None
    assert large_state_crossover(ssd_big, "P", "N", 16, heads=2) is None  # few heads
    assert large_state_crossover({"P": 64, "N": 16, "L": 2048}, "P", "N", 32, 3 * 12) is None
    assert large_state_crossover({"P": 64, "N": 16, "L": 4096}, "P", "N", 32, 2 * 24) is not None
    assert large_state_crossover({"P": 64, "N": 8, "L": 4096}, "P", "N", 32, 8 * 32) is None
    assert large_state_crossover({"P": 64, "N": 128, "L": 64}, "P", "N", 16, 8 * 32) is None
    ssd_mid = {"P": 64, "N": 32, "L": 1024}  # 1.0e8 updates: below LARGE_WORK, above TILED_WORK
    assert large_state_crossover(ssd_mid, "P", "N", 32, 2 * 24) is None
    assert "matrix tiles" in large_state_crossover(ssd_mid, "P", "N", 32, 2 * 24, tiled=True)
    gla_small = {"K": 64, "V": 64, "L": 512}  # 7.5e7 updates at B=3 H=12: the tiled fallback
    assert large_state_crossover(gla_small, "K", "V", 32, 3 * 12, tiled=True) is not None
    assert large_state_crossover(gla_small, "K", "V", 32, 3 * 12) is None
    # 2.5e7 updates (B=1 H=12) take the tiled fallback, 1.7e7 (B=2 T=256 H=8) the kernel
    assert large_state_crossover(gla_small, "K", "V", 32, 12, tiled=True) is not None
    assert large_state_crossover({**gla_small, "L": 256}, "K", "V", 32, 16, tiled=True) is None
    # issue #3's small ssd shape, B=3 L=512 H=12 N=16 (1.9e7 updates): the tiled fallback
    ssd_small = {"P": 64, "N": 16, "L": 512}
    assert large_state_crossover(ssd_small, "P", "N", 32, 3 * 12, tiled=True) is not None
    assert large_state_crossover(ssd_small, "P", "N", 32, 3 * 12) is None
    heads = -(-LARGE_WORK // (4096 * 512))  # the fewest with enough updates at L=512
    gla = {"K": 64, "V": 64, "L": 512}
    reason = large_state_crossover(gla, "K", "V", 32, heads=heads)
    assert f"K*V=4096 > {LARGE_STATE}" in reason and f">= {LARGE_WORK:.1e}" in reason
    assert large_state_crossover(gla, "K", "V", 32, heads=heads - 1) is None
    assert large_state_crossover({**gla, "L": 4 * 512}, "K", "V", 32, heads=heads // 4 + 1)


def test_spans_run_side_by_side_only_at_small_launches():
    """``spans.plan``: large launches and short sequences walk their 256-step
    spans one after another; small launches over long sequences run spans
    side by side, the longest that give ``FILL`` threads (down to 32
    steps), when the checkpoints stay within 32-bit indexing."""
    assert (spans.SMALL_LAUNCH, spans.MIN_LENGTH, spans.FILL) == (
        {"ssd": 2**14, "gla": 2**14, "rglru": 2**11, "s6": 2**15, "rotlru": 2**12},
        512, 2**17)
    plan = functools.partial(spans.plan, "ssd")
    assert plan(2**14 + 32, 4096, 1) == (256, 1)
    assert plan(2**14, 511, 1) == (256, 1)
    assert plan(2**14, 2048, 1) == (256, 8)
    assert plan(2**13, 2048, 1) == (128, 16)
    assert plan(2**13, 2047, 1) == (128, 16)  # a short last span
    assert plan(64, 2048, 1) == (32, 64)  # never below 32 steps
    assert plan(64, 2048, 2**31 // 64) == (256, 1)  # 65 checkpoints would not index
    assert spans.plan("rglru", 2**13, 2048, 1) == (256, 1)
    assert spans.plan("rglru", 2**11, 2048, 1) == (32, 64)


def test_backward_spans_plan_apart_only_where_checkpoints_allow():
    """``spans.BACKWARD_LAUNCH``: the backward may run its spans side by
    side at larger launches than the forward; ssd and gla, whose checkpoints
    follow the spans, keep the forward's span."""
    assert spans.BACKWARD_LAUNCH == {"ssd": 2**15, "gla": 3 * 2**13, "rglru": 2**11,
                                     "s6": 2**16, "rotlru": 2**13}
    assert set(spans.BACKWARD_LAUNCH) == set(spans.SMALL_LAUNCH)
    assert (spans.CHECKPOINT_A_SPAN, spans.BACKWARD_SPANS) == (("ssd", "gla"), 4)
    assert spans.plan("s6", 49152, 2048, 1) == (256, 1)  # s6 B=4 D=1536 N=16
    assert spans.plan("s6", 49152, 2048, 1, backward=True) == (256, 8)
    assert spans.plan("s6", 98304, 2048, 1, backward=True) == (256, 1)
    assert spans.plan("rotlru", 8192, 2048, 1) == (256, 1)  # rotlru B=8 P=1024
    assert spans.plan("rotlru", 8192, 2048, 1, backward=True) == (128, 16)
    assert spans.plan("rglru", 2**12, 2048, 1, backward=True) == (256, 1)
    # ssd and gla: the forward's plan, or its 256-step spans side by side (4 or more)
    assert spans.plan("ssd", 2**13, 2048, 1, backward=True) == (128, 16)
    assert spans.plan("ssd", 2**15, 2048, 1) == (256, 1)
    assert spans.plan("ssd", 2**15, 2048, 1, backward=True) == (256, 8)
    assert spans.plan("ssd", 2**15, 769, 1, backward=True) == (256, 4)
    assert spans.plan("ssd", 2**15, 768, 1, backward=True) == (256, 1)
    assert spans.plan("ssd", 2**15 + 32, 2048, 1, backward=True) == (256, 1)
    assert spans.plan("ssd", 2**15, 2048, 2**31 // 8, backward=True) == (256, 1)
    assert spans.plan("gla", 18432, 2048, 1, backward=True) == (256, 8)
    assert spans.plan("gla", 2**15, 2048, 1, backward=True) == (256, 1)


@pytest.mark.parametrize("dims,batch,per_channel,dtype,path", [
    ((64, 16), 64, False, mx.float32, "kernel"),
    ((64, 128), 37, False, mx.float32, "fallback"),  # 37 x 2 heads x 8192 x L=200 >= 1.2e8
    ((64, 128), 36, False, mx.float32, "kernel"),  # fewer heads: the kernel
    ((64, 128), 37, True, mx.float32, "fallback"),  # per-channel decays: the same rule
    ((64, 128), 36, True, mx.float32, "kernel"),
    # half precision, per-head decays: the fallback on matrix tiles from 1.8e7 updates
    ((64, 128), 6, False, mx.bfloat16, "fallback"),  # 6 x 2 heads x 8192 x L=200 >= 1.8e7
    ((64, 128), 5, False, mx.bfloat16, "kernel"),
    ((64, 128), 6, True, mx.bfloat16, "kernel"),  # per-channel: no tiles
    ((64, 120), 36, False, mx.bfloat16, "kernel"),  # N=120: no tiles (16 does not divide it)
])
def test_auto_follows_the_crossover_and_kernel_can_still_be_forced(dims, batch, per_channel,
                                                                   dtype, path):
    p, n = dims
    x, dt = mx.zeros((batch, 200, 2, p), dtype), mx.zeros((batch, 200, 2), dtype)
    B = C = mx.zeros((batch, 200, 1, n), dtype)
    A = -mx.ones((2, n) if per_channel else (2,))
    with simulate("cuda"):
        assert recurops.explain("ssd", x, dt, A, B, C).path == path
        y, _ = recurops.scan("ssd", x[:1, :3], dt[:1, :3], A, B[:1, :3], C[:1, :3],
                             impl="kernel")
        assert y.shape == (1, 3, 2, p)


def test_backward_split_widens_only_small_launches_of_full_lanes():
    def threads(rows):
        return lambda split: rows * split

    assert backward_split(64, threads(2**13)) == 16  # 8 values a lane at 8 lanes, 2^16 threads
    assert backward_split(128, threads(2**13)) == 16
    assert backward_split(128, threads(2**14)) == 8  # 2^17 threads: the forward's split
    assert backward_split(16, threads(64)) == 8  # 2 values a lane
    assert backward_split(72, threads(64)) == 8  # 16 does not divide N
    assert backward_split(6, threads(64)) == 2


@pytest.mark.parametrize("length,path", [(1, "fallback"), (4, "fallback"), (5, "kernel")])
def test_rglru_decoding_steps_take_the_step_form(length, path):
    a = x = mx.zeros((2, length, 64))
    with simulate("cuda"):
        assert recurops.explain("rglru", a, x).path == path
        assert recurops.explain("ssd", mx.zeros((2, length, 2, 64)), mx.zeros((2, length, 2)),
                                -mx.ones((2,)), *[mx.zeros((2, length, 1, 16))] * 2
                                ).path == "kernel"  # one launch beats its step form

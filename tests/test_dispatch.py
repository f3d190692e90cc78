"""Dispatch on a GPU backend (simulated on the CPU): measured crossovers."""

import mlx.core as mx
import pytest

import recurops
from recurops.kernels.chassis import LARGE_STATE, large_state_crossover
from recurops.testing import simulate


def test_crossover_only_for_large_states_over_long_sequences():
    assert large_state_crossover({"P": 64, "N": 128, "L": 2048}, "P", "N", 16) is not None
    assert large_state_crossover({"P": 64, "N": 16, "L": 2048}, "P", "N", 32) is None
    assert large_state_crossover({"P": 64, "N": 128, "L": 64}, "P", "N", 16) is None
    reason = large_state_crossover({"K": 64, "V": 64, "L": 512}, "K", "V", 32)
    assert f"K*V=4096 > {LARGE_STATE}" in reason
    assert large_state_crossover({"K": 64, "V": 64, "L": 512}, "K", "V", 32, True) is None


@pytest.mark.parametrize("dims,per_channel,path", [
    ((64, 16), False, "kernel"),
    ((64, 128), False, "fallback"),
    ((64, 128), True, "kernel"),  # per-channel decays: the kernel at any state size
])
def test_auto_follows_the_crossover_and_kernel_can_still_be_forced(dims, per_channel, path):
    p, n = dims
    x, dt = mx.zeros((1, 200, 2, p)), mx.zeros((1, 200, 2))
    B = C = mx.zeros((1, 200, 1, n))
    A = -mx.ones((2, n) if per_channel else (2,))
    with simulate("cuda"):
        assert recurops.explain("ssd", x, dt, A, B, C).path == path
        y, _ = recurops.scan("ssd", x[:, :3], dt[:, :3], A, B[:, :3], C[:, :3], impl="kernel")
        assert y.shape == (1, 3, 2, p)

"""Inputs and checks shared by the kernel tests on a GPU (test_kernels.py)
and on the CPU executor (test_simulated_kernels.py)."""

import mlx.core as mx
import numpy as np
from cases import relative_error

import recurops
from recurops._kind import STEP_FORM_STEPS
from recurops.kernels import spans


def kernel_inputs(kind, rng, batch, length, dims, per_channel=False, slow_decays=False):
    """Float32 NumPy inputs of ``kind`` across its domain: exact 0 and 1 decays
    and gates, negative and >1 ``a`` for the diagonal kinds; or, with
    ``slow_decays``, every decay in [0.96, 1], so that products over a span
    of 32 steps stay near 1 and what one span hands the next weighs on the
    results."""
    host = _inputs(kind, rng, batch, length, dims, per_channel)
    if not slow_decays:
        return host
    host = list(host)
    if kind in ("rglru", "rotlru"):
        host[0] = 0.98 + 0.02 * host[0] / max(np.abs(host[0]).max(), 1e-30)
    elif kind == "gla":
        host[3] = 0.96 + 0.04 * host[3]
    else:  # ssd and s6: exp(dt * A) with A in [-1, 0]
        host[1] = 0.04 * host[1]
    return tuple(x.astype(np.float32) for x in host)


def _inputs(kind, rng, batch, length, dims, per_channel):
    def normal(*shape):
        return rng.standard_normal((*batch, *shape)).astype(np.float32)

    def unit(*shape, lead=True):
        shape = (*batch, *shape) if lead else shape
        u = rng.uniform(0, 1, shape).astype(np.float32)
        u[u < 0.05] = 0.0  # exact zeros and ones in every decay
        u[u > 0.95] = 1.0
        return u

    L = length
    if kind == "ssd":
        H, P, N, G = dims["H"], dims["P"], dims["N"], dims["G"]
        A = -unit(H, N, lead=False) if per_channel else -unit(H, lead=False)
        return (normal(L, H, P), unit(L, H), A, normal(L, G, N), normal(L, G, N))
    if kind == "gla":
        H, K, V = dims["H"], dims["K"], dims["V"]
        g = unit(L, H, K) if per_channel else unit(L, H)
        return (normal(L, H, K) / np.sqrt(K), normal(L, H, K), normal(L, H, V), g)
    if kind == "rglru":
        D = dims["D"]
        return (rng.uniform(-1.1, 1.1, (*batch, L, D)).astype(np.float32), normal(L, D))
    if kind == "rotlru":
        P = dims["P"]
        a = rng.uniform(-1.0, 1.0, (*batch, L, P)).astype(np.float32)
        theta = rng.uniform(-np.pi, np.pi, (*batch, L, P)).astype(np.float32)
        return (a, np.cos(theta), np.sin(theta) * 1.05, normal(L, 2 * P))
    D, N = dims["D"], dims["N"]
    return (normal(L, D), unit(L, D), -unit(D, N, lead=False), normal(L, N), normal(L, N))


def plan_spans(patch, forward: bool, backward: bool):
    """Through ``patch`` (a pytest ``MonkeyPatch``), spans side by side
    (kernels/spans.py) wherever there are two or more, whatever the launch
    and length, in the forward and in the backward as asked; one after
    another otherwise."""
    patch.setattr(spans, "MIN_LENGTH", 0)
    patch.setattr(spans, "SMALL_LAUNCH", dict.fromkeys(spans.SMALL_LAUNCH,
                                                       2**62 if forward else -1))
    patch.setattr(spans, "BACKWARD_LAUNCH", dict.fromkeys(spans.BACKWARD_LAUNCH,
                                                          2**62 if backward else -1))
    patch.setattr(spans, "BACKWARD_SPANS", 2)


def auto_path(kind, length):
    """The path ``impl="auto"`` takes on a GPU for these small cases: the
    kernel, but for ``rglru`` calls of at most ``STEP_FORM_STEPS`` steps."""
    return "fallback" if kind == "rglru" and length <= STEP_FORM_STEPS else "kernel"


def probe(kind, arrays, rng):
    """A random initial state and weights for ``y`` and the final state, for
    a loss ``sum(y * wy) + sum(final * ws)`` that reaches every gradient."""
    y, final = recurops.scan(kind, *arrays, impl="fallback")
    state, wy, ws = (mx.array(rng.standard_normal(s).astype(np.float32))
                     for s in (final.shape, y.shape, final.shape))
    return state, wy, ws


def value_and_grads(kind, arrays, state, impl, wy, ws):
    """``[y, final_state, d(input) for each input, d(state)]`` as float32 NumPy."""
    def loss(*args):
        y, final = recurops.scan(kind, *args[:-1], state=args[-1], impl=impl)
        return (y.astype(mx.float32) * wy).sum() + (final * ws).sum()

    y, final = recurops.scan(kind, *arrays, state=state, impl=impl)
    grads = mx.grad(loss, tuple(range(len(arrays) + 1)))(*arrays, state)
    mx.eval(y, final, grads)
    return [np.array(t.astype(mx.float32)) for t in (y, final, *grads)]


def relative_errors(kind, got, expected):
    """Relative error (norm of the difference over the norm) of each result."""
    names = ["y", "final_state", *(f"d{n}" for n in recurops.KINDS[kind].input_names), "dstate"]
    return {name: relative_error(g, e, floor=1e-30)
            for name, g, e in zip(names, got, expected, strict=True)}

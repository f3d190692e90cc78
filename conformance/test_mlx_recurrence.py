"""recurops against mlx-recurrence 0.3.0, the package it replaces.

Mappings (docs/kinds/*.md and docs/migration.md give them to users):

- ``ssd_scan_reference(u, delta, B, C, A_neg)`` is ``scan("ssd", u, delta, A_neg, B, C)``
  with one group per head (``G = H``); an ``A [H]`` of recurops is ``A_neg``
  broadcast over ``N``.
- ``gla_scan_reference(q, k, v, gates)`` is ``scan("gla", q, k, v, gates)``.
- ``rglru_scan_reference(a, x)`` is ``scan("rglru", a, x)``.
- ``rotlru_scan_reference(a, cs, sn, x)`` is ``scan("rotlru", a, cs, sn, x)``.
- legacy ``selective_scan_chunked(u, delta, B_in, C_in, A_neg)`` is
  ``scan("s6", u, delta, A_neg, B_in, C_in)``.
- legacy ``gla_scan_chunked(q, k, v, gates)`` is ``scan("gla", q, k, v, gates)``.

mlx-recurrence always starts from a zero state and its references return
``y`` only, so these compare ``y`` and every input gradient. The Metal
functions (``*_scan``, ``*_with_state``, ``*_metal``) run only where MLX has a
Metal GPU.
"""

import mlx.core as mx
import numpy as np
import pytest
from harness import IMPLS, RTOL, conform, gen, normal, pinned, rel_err, uniform, with_exact
from hypothesis import given
from hypothesis import strategies as st

import recurops

mr = pinned("mlx-recurrence", "mlx_recurrence")

seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)
lengths = st.integers(1, 24)


def y_only(kind):
    def ours(*args, impl):
        return (recurops.scan(kind, *args, impl=impl)[0],)

    return ours


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=lengths, H=small, P=small, N=small,
       per_head=st.booleans())
def test_ssd_reference(impl, seed, b, L, H, P, N, per_head):
    rng = gen(seed)
    A = -np.exp(uniform(rng, -3, 3, *((H,) if per_head else (H, N))))
    arrays = dict(
        u=normal(rng, b, L, H, P),
        delta=with_exact(rng, uniform(rng, 0, 2, b, L, H), [0.0], 0.1),
        B=normal(rng, b, L, H, N),
        C=normal(rng, b, L, H, N),
        A=with_exact(rng, A.astype(np.float32), [0.0], 0.1),
    )

    def ours(u, delta, B, C, A, impl):
        return (recurops.scan("ssd", u, delta, A, B, C, impl=impl)[0],)

    def theirs(u, delta, B, C, A):
        A_neg = mx.broadcast_to(A[:, None], (H, N)) if per_head else A
        return (mr.ssd_scan_reference(u, delta, B, C, A_neg),)

    conform(ours, theirs, arrays, impl=impl, outputs=("y",))


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=lengths, H=small, D=small)
def test_gla_reference(impl, seed, b, L, H, D):
    rng = gen(seed)
    arrays = dict(
        q=normal(rng, b, L, H, D),
        k=normal(rng, b, L, H, D),
        v=normal(rng, b, L, H, D),
        gates=with_exact(rng, uniform(rng, 0, 1, b, L, H), [0.0, 1.0], 0.15),
    )
    conform(y_only("gla"), lambda *a: (mr.gla_scan_reference(*a),), arrays, impl=impl,
            outputs=("y",))


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=lengths, D=st.integers(1, 6))
def test_rglru_reference(impl, seed, b, L, D):
    rng = gen(seed)
    arrays = dict(
        a=with_exact(rng, uniform(rng, -1.2, 1.2, b, L, D), [0.0, 1.0, -1.0], 0.15),
        x=normal(rng, b, L, D),
    )
    conform(y_only("rglru"), lambda a, x: (mr.rglru_scan_reference(a, x),), arrays,
            impl=impl, outputs=("y",))


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=lengths, P=st.integers(1, 4))
def test_rotlru_reference(impl, seed, b, L, P):
    rng = gen(seed)
    theta = uniform(rng, -np.pi, np.pi, b, L, P)
    radius = uniform(rng, 0.8, 1.1, b, L, P)  # (cos, sin) need not be normalised
    arrays = dict(
        a=with_exact(rng, uniform(rng, -1.1, 1.1, b, L, P), [0.0, 1.0], 0.1),
        cs=(radius * np.cos(theta)).astype(np.float32),
        sn=(radius * np.sin(theta)).astype(np.float32),
        x=normal(rng, b, L, 2 * P),
    )
    conform(y_only("rotlru"), lambda *a: (mr.rotlru_scan_reference(*a),), arrays,
            impl=impl, outputs=("y",))


# The legacy chunked functions evaluate h[t] = P[t] * (h0 + cumsum(x / (P + 1e-30)))
# with P the cumulative decay inside a 32-step chunk: exact while P stays well
# above 1e-30 (values) and P**2 above float32's smallest normal (gradients).
# These tests draw log-decays of at least -1 per step, so P >= e^-32 in a chunk;
# test_legacy_chunked_strong_decay shows what happens beyond that. They also draw
# L >= 2: at L = 1 from a zero state the decay gradient is identically zero, which
# recurops returns exactly and the division form as rounding noise of size eps / gate.


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=st.integers(2, 40), D=small, N=small)
def test_legacy_selective_scan_chunked(impl, seed, b, L, D, N):
    rng = gen(seed)
    arrays = dict(
        u=normal(rng, b, L, D),
        delta=with_exact(rng, uniform(rng, 0, 1, b, L, D), [0.0], 0.1),
        B=normal(rng, b, L, N),
        C=normal(rng, b, L, N),
        A=with_exact(rng, uniform(rng, -1, 0, D, N), [0.0], 0.1),
    )

    def ours(u, delta, B, C, A, impl):
        return (recurops.scan("s6", u, delta, A, B, C, impl=impl)[0],)

    def theirs(u, delta, B, C, A):
        return (mr.selective_scan_chunked(u, delta, B, C, A),)

    conform(ours, theirs, arrays, impl=impl, outputs=("y",))


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=st.integers(2, 40), H=small, D=small)
def test_legacy_gla_scan_chunked(impl, seed, b, L, H, D):
    rng = gen(seed)
    arrays = dict(
        q=normal(rng, b, L, H, D),
        k=normal(rng, b, L, H, D),
        v=normal(rng, b, L, H, D),
        gates=with_exact(rng, uniform(rng, np.exp(-1), 1, b, L, H), [1.0], 0.15),
    )
    conform(y_only("gla"), lambda *a: (mr.gla_scan_chunked(*a),), arrays,
            impl=impl, outputs=("y",))


def test_legacy_chunked_strong_decay():
    """A documented difference, not a recurops bug: with gates near 0 the legacy
    chunked GLA loses the state (cumulative decay underflows inside a chunk),
    while recurops stays within tolerance of a float64 evaluation."""
    rng = gen(0)
    q, k, v = (mx.array(normal(rng, 1, 40, 2, 4)) for _ in range(3))
    gates = mx.full((1, 40, 2), 0.05)
    with mx.stream(mx.cpu):
        truth = recurops.scan(
            "gla", *(t.astype(mx.float64) for t in (q, k, v, gates)), impl="reference"
        )[0]
    ours = recurops.scan("gla", q, k, v, gates)[0]
    legacy = mr.gla_scan_chunked(q, k, v, gates)
    assert rel_err(ours, truth) < RTOL
    assert rel_err(legacy, truth) > 0.1


# ----------------------------------------------------------------------------- Metal only

metal = pytest.mark.skipif(
    not mx.metal.is_available(), reason="mlx-recurrence's kernels need Metal"
)


@metal
@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, H=st.integers(1, 2), N=small, segs=st.integers(1, 2))
def test_metal_with_state(impl, seed, H, N, segs):
    """The fused ``*_with_state`` kernels (L % 32 == 0, lane dimension 32): values of
    ``y`` and ``final_state``, gradients through ``y`` (their VJP ignores the
    final state's cotangent)."""
    rng = gen(seed)
    L, Dh = 32 * segs, 32
    cases = {
        "ssd": (
            dict(u=normal(rng, 1, L, H, Dh), delta=uniform(rng, 0, 1, 1, L, H),
                 B=normal(rng, 1, L, H, N), C=normal(rng, 1, L, H, N),
                 A=-uniform(rng, 0, 2, H, N)),
            lambda u, dt, B, C, A, impl: recurops.scan("ssd", u, dt, A, B, C, impl=impl),
            lambda u, dt, B, C, A: mr.ssd_scan_with_state(u, dt, B, C, A),
        ),
        "gla": (
            dict(q=normal(rng, 1, L, H, Dh), k=normal(rng, 1, L, H, Dh),
                 v=normal(rng, 1, L, H, Dh), g=uniform(rng, 0, 1, 1, L, H)),
            lambda *a, impl: recurops.scan("gla", *a, impl=impl),
            mr.gla_scan_with_state,
        ),
        "rglru": (
            dict(a=uniform(rng, -1, 1, 1, L, Dh), x=normal(rng, 1, L, Dh)),
            lambda *a, impl: recurops.scan("rglru", *a, impl=impl),
            mr.rglru_scan_with_state,
        ),
        "rotlru": (
            dict(a=uniform(rng, -1, 1, 1, L, Dh // 2), cs=uniform(rng, -1, 1, 1, L, Dh // 2),
                 sn=uniform(rng, -1, 1, 1, L, Dh // 2), x=normal(rng, 1, L, Dh)),
            lambda *a, impl: recurops.scan("rotlru", *a, impl=impl),
            mr.rotlru_scan_with_state,
        ),
    }
    for arrays, ours, theirs in cases.values():
        conform(ours, theirs, arrays, impl=impl, grad=False)
        conform(lambda *a, impl, f=ours: f(*a, impl=impl)[:1], lambda *a, f=theirs: f(*a)[:1],
                arrays, impl=impl, outputs=("y",))

"""recurops against flash-linear-attention 0.6.0's pure-PyTorch naive references, on the CPU.

Mappings (docs/kinds/gla.md gives them to users):

- layouts: fla 0.6.0 takes ``q, k [B, T, H, K]``, ``v [B, T, H, V]`` (time before
  heads, as recurops) and keeps states as ``[B, H, K, V]`` (as recurops).
- gates: fla's are log-space, ``g = exp(gk)``; recurops' are linear-space.
  ``gk [B, T, H, K]`` (GLA) is a per-key-channel gate, ``g [B, T, H]`` (simple GLA)
  a per-head gate.
- scale: fla multiplies ``q`` by ``scale`` (default ``K ** -0.5``;
  ``naive_recurrent_gla`` always uses the default); recurops uses ``q`` as given, so
  pass ``q * scale``.

So ``naive_recurrent_gla(q, k, v, gk, h0, True)`` is
``scan("gla", q * K**-0.5, k, v, exp(gk), state=h0)``, and the simple-GLA references
are ``scan("gla", q * scale, k, v, exp(g), state=h0)``.

``import fla.ops.gla.naive`` needs Triton (fla/ops/__init__ imports every kernel),
so harness.load_fla_naive loads the naive files by path when that import fails;
they need only torch and einops. Gradients on the fla side come from torch
autograd, on the recurops side from ``mx.vjp``; test_bridge_* runs recurops on
torch tensors through its array-API bridge, gradients through torch autograd.
"""

import numpy as np
import pytest
from harness import IMPLS, conform, gen, load_fla_naive, normal, uniform, with_exact
from hypothesis import given
from hypothesis import strategies as st

import recurops

gla_naive = load_fla_naive("gla/naive.py")
simple_naive = load_fla_naive("simple_gla/naive.py")
import mlx.core as mx  # noqa: E402
import torch  # noqa: E402

seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)


def log_gates(rng, *shape):
    """Log-space gates in [-4, 0] with some exact 0 (gate 1) and some strong decays."""
    return with_exact(rng, uniform(rng, -4, 0, *shape), [0.0, -20.0], 0.15)


def qkv(rng, b, T, H, K, V):
    return dict(q=normal(rng, b, T, H, K), k=normal(rng, b, T, H, K), v=normal(rng, b, T, H, V))


def gla_from_fla(q, k, v, g, h0=None, *, scale, impl):
    """fla's conventions (log gates, q scale) on top of recurops.scan("gla")."""
    return recurops.scan("gla", q * scale, k, v, mx.exp(g), state=h0, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), T=st.integers(1, 16), H=small, K=small, V=small,
       with_state=st.booleans())
def test_naive_recurrent_gla(impl, seed, b, T, H, K, V, with_state):
    rng = gen(seed)
    arrays = qkv(rng, b, T, H, K, V) | dict(gk=log_gates(rng, b, T, H, K))
    if with_state:
        arrays["h0"] = normal(rng, b, H, K, V)

    def ours(*args, impl):
        return gla_from_fla(*args, scale=K**-0.5, impl=impl)

    def theirs(q, k, v, gk, h0=None):
        return gla_naive.naive_recurrent_gla(q, k, v, gk, initial_state=h0,
                                             output_final_state=True)

    conform(ours, theirs, arrays, impl=impl, framework="torch")


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), T=st.integers(1, 16), H=small, K=small, V=small,
       with_state=st.booleans(), scale=st.sampled_from([None, 1.0, 0.3]))
def test_naive_recurrent_simple_gla(impl, seed, b, T, H, K, V, with_state, scale):
    rng = gen(seed)
    arrays = qkv(rng, b, T, H, K, V) | dict(g=log_gates(rng, b, T, H))
    if with_state:
        arrays["h0"] = normal(rng, b, H, K, V)

    def ours(*args, impl):
        return gla_from_fla(*args, scale=K**-0.5 if scale is None else scale, impl=impl)

    def theirs(q, k, v, g, h0=None):
        return simple_naive.naive_recurrent_simple_gla(q, k, v, g, scale=scale, initial_state=h0,
                                                       output_final_state=True)

    conform(ours, theirs, arrays, impl=impl, framework="torch")


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), T=st.integers(1, 20), H=small, K=small, V=small,
       with_state=st.booleans(), chunk=st.sampled_from([1, 4, 64]),
       scale=st.sampled_from([None, 0.5]))
def test_naive_chunk_simple_gla(impl, seed, b, T, H, K, V, with_state, chunk, scale):
    rng = gen(seed)
    arrays = qkv(rng, b, T, H, K, V) | dict(g=log_gates(rng, b, T, H))
    if with_state:
        arrays["h0"] = normal(rng, b, H, K, V)

    def ours(*args, impl):
        return gla_from_fla(*args, scale=K**-0.5 if scale is None else scale, impl=impl)

    def theirs(q, k, v, g, h0=None):
        return simple_naive.naive_chunk_simple_gla(q, k, v, g, initial_state=h0,
                                                   output_final_state=True, chunk_size=chunk,
                                                   scale=scale)

    conform(ours, theirs, arrays, impl=impl, framework="torch")


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), T=st.integers(1, 16), H=small, K=small, V=small)
def test_naive_parallel_simple_gla(impl, seed, b, T, H, K, V):
    """The quadratic (attention) form; it has no state, so only ``y`` is compared."""
    rng = gen(seed)
    arrays = qkv(rng, b, T, H, K, V) | dict(g=log_gates(rng, b, T, H))

    def ours(*args, impl):
        return gla_from_fla(*args, scale=K**-0.5, impl=impl)[:1]

    def theirs(q, k, v, g):
        return simple_naive.naive_parallel_simple_gla(q, k, v, g)[:1]

    conform(ours, theirs, arrays, impl=impl, framework="torch", outputs=("y",))


def _bridge_available():
    try:
        recurops.scan("rglru", torch.ones(1, 1, 1), torch.ones(1, 1, 1))
    except TypeError:
        return False
    return True


bridge = pytest.mark.skipif(not _bridge_available(),
                            reason="recurops does not accept torch tensors here")


@bridge
@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, T=st.integers(1, 12), H=small, K=small, V=small,
       with_state=st.booleans(), per_channel=st.booleans())
def test_bridge_torch_autograd(impl, seed, T, H, K, V, with_state, per_channel):
    """recurops called on torch tensors (SPEC section 6), differentiated by torch
    autograd, against fla's naive references differentiated by torch autograd."""
    rng = gen(seed)
    gate_shape = (1, T, H, K) if per_channel else (1, T, H)
    arrays = qkv(rng, 1, T, H, K, V) | dict(g=log_gates(rng, *gate_shape))
    if with_state:
        arrays["h0"] = normal(rng, 1, H, K, V)
    scale = K**-0.5

    def ours(q, k, v, g, h0=None, *, impl):
        return recurops.scan("gla", q * scale, k, v, g.exp(), state=h0, impl=impl)

    def theirs(q, k, v, g, h0=None):
        if per_channel:
            return gla_naive.naive_recurrent_gla(q, k, v, g, initial_state=h0,
                                                 output_final_state=True)
        return simple_naive.naive_recurrent_simple_gla(q, k, v, g, scale=scale,
                                                       initial_state=h0)

    conform(ours, theirs, arrays, impl=impl, framework="torch", ours_framework="torch")


def test_bridge_returns_torch():
    if not _bridge_available():
        pytest.skip("recurops does not accept torch tensors here")
    q = torch.ones(1, 2, 1, 3)
    y, state = recurops.scan("gla", q, q, q, torch.full((1, 2, 1), 0.5))
    assert isinstance(y, torch.Tensor) and isinstance(state, torch.Tensor)
    assert np.allclose(y.numpy()[0, :, 0], [[3.0] * 3, [4.5] * 3])  # 3, then 0.5 * 3 + 3

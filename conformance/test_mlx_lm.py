"""recurops against mlx-lm 0.32.2's recurrent ops: Mamba-2 SSD, Mamba-1, RecurrentGemma.

Mappings (written out for users in docs/kinds/ssd.md, s6.md and rglru.md):

- ``mlx_lm.models.ssm.ssm_attn(x, A_log, B, C, D, dt, dt_bias, state, time_step_limit)``
  is ``y, s = scan("ssd", x, dt_eff, -exp(A_log), B, C, state=state)`` followed by
  ``y + x * D[:, None]``, where ``dt_eff = clip(softplus(dt + dt_bias), *time_step_limit)``.
  Same group rule (head ``h`` reads group ``h // (H // G)``) and state layout
  ``[B, H, P, N]``. The ``z`` gate of Mamba-2 is not part of ``ssm_attn``: mlx-lm
  applies it afterwards in ``MambaRMSNormGated``.
- Mamba-1 (``mlx_lm.models.mamba``) has no separable scan function: the recurrence is
  the method ``MambaBlock.ssm_step``, one token at a time, with ``delta``, ``B`` and
  ``C`` projected from the token inside it. It is driven here on a randomly
  initialised block (no weights are loaded): ``scan("s6", x, delta, -exp(A_log), B, C)``
  plus ``D * x``, with ``delta = softplus(dt_proj(x_proj(x)[..., :R]))``. State
  ``[B, D, N]`` in both.
- RecurrentGemma: ``mlx_lm.models.recurrent_gemma.rnn_scan(x, a, h0)`` is
  ``scan("rglru", a, x, state=h0)`` (note the argument order). The ``RGLRU`` layer
  computes ``a = exp(-8 * sigmoid(r) * softplus(Lambda))`` and feeds
  ``x * sigmoid(i) * sqrt(1 - a**2)``, with the multiplier forced to 1 at the
  first token when there is no cache; test_rglru_layer checks that recipe.

mlx-lm's functions and the tests' own projections run on MLX's CPU stream
(harness.on_cpu): on MLX's CUDA backend their float32 matmuls would run in TF32.
``ssm_attn`` there is ~1e-3 accurate (docs/conformance.md); recurops runs on the
default device.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from harness import IMPLS, conform, gen, import_mlx_lm, normal, on_cpu, uniform
from hypothesis import given
from hypothesis import strategies as st

import recurops

mamba, recurrent_gemma, ssm = import_mlx_lm("mamba", "recurrent_gemma", "ssm")
ssm_attn, ssm_update = ssm.ssm_attn, ssm.ssm_update

seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)
LIMITS = [(0.001, 100.0), (0.0, float("inf"))]  # mamba2's default; nemotron_h / falcon_h1


def ssd_from_mlx_lm(x, A_log, B, C, D, dt, dt_bias, state=None, *, limit, impl):
    """mlx-lm's ssm_attn conventions on top of recurops.scan("ssd")."""
    dt_eff = mx.clip(nn.softplus(dt + dt_bias), limit[0], limit[1])
    y, final = recurops.scan("ssd", x, dt_eff, -mx.exp(A_log), B, C, state=state, impl=impl)
    return y + x * D[:, None], final


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("limit", LIMITS)
@given(seed=seeds, b=st.integers(1, 2), L=st.integers(1, 20), G=st.integers(1, 2),
       heads_per_group=st.integers(1, 2), P=small, N=small, with_state=st.booleans(),
       step=st.sampled_from([256, 3, 1]))
def test_ssm_attn(impl, limit, seed, b, L, G, heads_per_group, P, N, with_state, step):
    rng = gen(seed)
    H = G * heads_per_group
    arrays = dict(
        x=normal(rng, b, L, H, P),
        A_log=uniform(rng, -2, 2, H),
        B=normal(rng, b, L, G, N),
        C=normal(rng, b, L, G, N),
        D=normal(rng, H),
        dt=normal(rng, b, L, H, scale=2.0),
        dt_bias=normal(rng, H),
    )
    if with_state:
        arrays["state"] = normal(rng, b, H, P, N)

    def ours(*args, impl):
        return ssd_from_mlx_lm(*args, limit=limit, impl=impl)

    @on_cpu
    def theirs(*args):
        return ssm_attn(*args, time_step_limit=limit, step=step)

    conform(ours, theirs, arrays, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, L=st.integers(2, 8), P=small, N=small)
def test_ssm_update_decode(impl, seed, L, P, N):
    """Token-by-token decoding with ``ssm_update`` (L = 1 per call, state carried)
    against chunked recurops calls: a prefill of one token, then one call per token."""
    rng = gen(seed)
    H, G = 2, 1
    x, A_log, B, C = normal(rng, 1, L, H, P), uniform(rng, -2, 2, H), normal(rng, 1, L, G, N), \
        normal(rng, 1, L, G, N)
    D, dt, dt_bias = normal(rng, H), normal(rng, 1, L, H), normal(rng, H)
    arrays = dict(x=x, A_log=A_log, B=B, C=C, D=D, dt=dt, dt_bias=dt_bias)

    def stepwise(step_fn):
        def run(x, A_log, B, C, D, dt, dt_bias, **kw):
            state, ys = None, []
            for t in range(L):
                sl = slice(t, t + 1)
                y, state = step_fn(x[:, sl], A_log, B[:, sl], C[:, sl], D, dt[:, sl], dt_bias,
                                   state, **kw)
                ys.append(y)
            return mx.concatenate(ys, axis=1), state

        return run

    ours = stepwise(lambda *a, impl: ssd_from_mlx_lm(*a, limit=LIMITS[0], impl=impl))
    theirs = on_cpu(stepwise(lambda *a: ssm_update(*a, time_step_limit=LIMITS[0])))
    conform(ours, theirs, arrays, impl=impl)


def _mamba_block(D, N, R, rms):
    args = mamba.ModelArgs(
        model_type="falcon_mamba" if rms else "mamba", vocab_size=8, hidden_size=4,
        intermediate_size=D, state_size=N, num_hidden_layers=1, conv_kernel=2,
        use_bias=False, use_conv_bias=False, time_step_rank=R,
    )
    return mamba.MambaBlock(args)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rms", [False, True], ids=["mamba", "falcon_mamba"])
@given(seed=seeds, b=st.integers(1, 2), L=st.integers(1, 12), D=small, N=small,
       R=st.integers(1, 3), with_state=st.booleans())
def test_mamba1_ssm_step(impl, rms, seed, b, L, D, N, R, with_state):
    mx.random.seed(seed % 2**31)
    block = _mamba_block(D, N, R, rms)
    rng = gen(seed)
    arrays = dict(x=normal(rng, b, L, D), A_log=uniform(rng, -2, 2, D, N), D=normal(rng, D))
    if with_state:
        arrays["state"] = normal(rng, b, D, N)

    @on_cpu
    def project(x):
        delta, B, C = mx.split(block.x_proj(x), [R, R + N], axis=-1)
        if rms:  # falcon_mamba normalises delta, B and C before use
            delta, B, C = (mx.fast.rms_norm(t, None, block.args.mixer_rms_eps)
                           for t in (delta, B, C))
        return nn.softplus(block.dt_proj(delta)), B, C

    def ours(x, A_log, Dskip, state=None, *, impl):
        delta, B, C = project(x)
        y, final = recurops.scan("s6", x, delta, -mx.exp(A_log), B, C, state=state, impl=impl)
        return y + Dskip * x, final

    @on_cpu
    def theirs(x, A_log, Dskip, state=None):
        block.D = Dskip
        A = -mx.exp(A_log)
        ys = []
        for t in range(L):
            y, state = block.ssm_step(x[:, t], A, state)
            ys.append(y)
        return mx.stack(ys, axis=1), state

    conform(ours, theirs, arrays, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=st.integers(1, 12), D=st.integers(1, 6),
       with_state=st.booleans())
def test_rnn_scan(impl, seed, b, L, D, with_state):
    """``rnn_scan`` in both of its modes: L = 1 ("sampling") and L > 1 ("linear")."""
    rng = gen(seed)
    arrays = dict(x=normal(rng, b, L, D), a=uniform(rng, -1.2, 1.2, b, L, D))
    if with_state:
        arrays["h0"] = normal(rng, b, D)

    def ours(x, a, h0=None, *, impl):
        return recurops.scan("rglru", a, x, state=h0, impl=impl)

    def theirs(x, a, h0=None):
        return recurrent_gemma.rnn_scan(x, a, h0)

    conform(ours, theirs, arrays, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=st.integers(1, 12), heads=st.integers(1, 2),
       head_dim=st.integers(1, 3), with_state=st.booleans())
def test_rglru_layer(impl, seed, b, L, heads, head_dim, with_state):
    """The whole ``RGLRU`` layer: its gates computed as documented, then the scan."""
    rng = gen(seed)
    W = heads * head_dim
    layer = recurrent_gemma.RGLRU(width=W, num_heads=heads)
    arrays = dict(
        x=normal(rng, b, L, W),
        Lambda=normal(rng, W),
        Wi=normal(rng, heads, head_dim, head_dim, scale=0.5),
        bi=normal(rng, heads, head_dim),
        Wr=normal(rng, heads, head_dim, head_dim, scale=0.5),
        br=normal(rng, heads, head_dim),
    )
    if with_state:
        arrays["h0"] = normal(rng, b, W)

    @on_cpu
    def block_linear(x, w, bias):
        h = x.reshape(b, L, heads, head_dim)
        return mx.sigmoid(mx.einsum("blhi,hij->blhj", h, w) + bias).reshape(b, L, W)

    def ours(x, Lambda, Wi, bi, Wr, br, h0=None, *, impl):
        gate_x, gate_a = block_linear(x, Wi, bi), block_linear(x, Wr, br)
        log_a = -8.0 * gate_a * nn.softplus(Lambda)
        a = mx.exp(log_a)
        multiplier = mx.sqrt(1 - mx.exp(2 * log_a))
        if h0 is None:  # no cache: the first token is not normalised
            multiplier = mx.concatenate([mx.ones_like(multiplier[:, :1]), multiplier[:, 1:]], 1)
        return recurops.scan("rglru", a, x * gate_x * multiplier, state=h0, impl=impl)

    @on_cpu
    def theirs(x, Lambda, Wi, bi, Wr, br, h0=None):
        layer.update(dict(recurrent_param=Lambda, input_gate_weight=Wi, input_gate_bias=bi,
                          recurrent_gate_weight=Wr, recurrent_gate_bias=br))
        return layer(x, cache=h0)

    conform(ours, theirs, arrays, impl=impl)


def test_mlx_lm_state_dtype_is_float32():
    """A convention difference worth knowing when porting: ``rnn_scan`` keeps the state
    in the input dtype, recurops in float32 whatever the input dtype."""
    a = mx.full((1, 3, 2), 0.5, mx.bfloat16)
    x = mx.ones((1, 3, 2), mx.bfloat16)
    assert recurrent_gemma.rnn_scan(x, a, None)[1].dtype == mx.bfloat16
    y, final = recurops.scan("rglru", a, x)
    assert (y.dtype, final.dtype) == (mx.bfloat16, mx.float32)
    assert np.allclose(np.array(final), [[1.75, 1.75]])

"""The chunked fallback's GPU and CPU forms.

On a GPU, ``scalar_chunked`` builds the decays and passes chunk states with
the fused kernels of ``recurops.kernels.chunked`` and keeps tiny decay
factors; elsewhere it passes states by a blocked associative scan and flushes
factors below 2^-63 to zero. CI has no GPU, so each form is forced here (the
GPU's kernels run in the kernel simulator, in both dialects) and checked
against SPEC section 3 (values and every gradient) for the kinds that use the
chunked form.
"""

import contextlib
import functools

import mlx.core as mx
import numpy as np
import pytest
from cases import EXAMPLE_SIZES, TOLERANCE, cotangents, draw_call, make_call, run, run_vjp
from hypothesis import given
from hypothesis import strategies as st
from test_paths import assert_gradients_match, assert_matches_spec

import recurops
from recurops._api import gpu_backend
from recurops.fallback import precise, scalar_chunked
from recurops.kernels import chunked
from recurops.testing import executor, simulate

seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(params=["cuda", "metal", "cpu"],
                ids=["gpu-form-cuda", "gpu-form-metal", "cpu-form"])
def state_passing(request, monkeypatch):
    """The GPU's chunked form (fused kernels, simulated, no flush) or the CPU's."""
    if request.param == "cpu":
        monkeypatch.setattr(scalar_chunked, "_fused", lambda *arrays, extent=0: False)
        monkeypatch.setattr(scalar_chunked, "_flushes", lambda: True)
        yield
        return
    with _gpu_form(request.param, monkeypatch):
        yield


@contextlib.contextmanager
def _gpu_form(dialect, patch):
    """The chunked form as on a GPU, its kernels simulated in ``dialect``;
    on CUDA MLX's float32 matmuls in TF32 as well (``_tf32_matmul``)."""
    if executor.available() is not None:
        pytest.skip(executor.available())
    patch.setattr(scalar_chunked, "_on_gpu", lambda: True)  # the GPU's chunk lengths
    patch.setattr(scalar_chunked, "_fused", chunked.takes)
    patch.setattr(scalar_chunked, "_flushes", lambda: False)
    if dialect == "cuda":
        patch.setattr(precise, "_tf32_active", lambda: True)
        patch.setattr(precise, "plain_matmul", _tf32_matmul)
    scalar_chunked._block.cache_clear()  # its custom functions hold the matmul
    try:
        with simulate(dialect):
            yield
    finally:
        scalar_chunked._block.cache_clear()


_PLAIN_MATMUL = precise.plain_matmul


def _tf32_matmul(a, b, add=None):
    """``precise.plain_matmul`` as MLX runs it on CUDA: float32 operands
    rounded to TF32 (a 10-bit mantissa, to nearest, ties away)."""
    if a.dtype == mx.float32 and b.dtype == mx.float32:
        a, b = _tf32(a), _tf32(b)
    return _PLAIN_MATMUL(a, b, add)


def _tf32(x: mx.array) -> mx.array:
    bits = x.view(mx.uint32)
    special = (bits & 0x7F800000) == 0x7F800000  # inf and nan keep their bits
    return mx.where(special, bits, (bits + 0x1000) & 0xFFFFE000).view(mx.float32)


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


def _normal(rng, *shape):
    return mx.array(rng.standard_normal(shape).astype(np.float32))


@contextlib.contextmanager
def _mlx_code():
    """The chunked form's MLX code, unflushed: what the fused kernels must match."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scalar_chunked, "_fused", lambda *arrays, extent=0: False)
        patch.setattr(scalar_chunked, "_flushes", lambda: False)
        yield


def _gates(rng, shape):
    """Decays across [0, 1], exact 0 and 1 included."""
    g = rng.uniform(0, 1, shape)
    g[rng.uniform(size=shape) < 0.15] = 0.0
    g[rng.uniform(size=shape) < 0.15] = 1.0
    return mx.array(g.astype(np.float32))


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@given(z=st.integers(1, 3), c=st.integers(1, 11), rows=st.sampled_from([1, 2, 3]),
       cols=st.sampled_from([1, 5, 32, 64]), shared=st.booleans(), seed=seeds)
def test_fused_pieces_match_mlx(dialect, z, c, rows, cols, shared, seed):
    """The kernels against the CPU form's MLX code: state passing both ways
    (partial warps, one or many elements per decay, the decay gradient summed
    a warp or a lane at a time), the decay matrices (gates of exactly 0 and 1
    too), the row dot products (rows shorter and longer than a warp) and the
    scaled sums."""
    if executor.available() is not None:
        pytest.skip(executor.available())
    rng = np.random.default_rng(seed)
    normal = functools.partial(_normal, rng)
    a = _gates(rng, (z, c, 1, 1) if shared else (z, c, rows, 1))
    b, g, before = normal(z, c, rows, cols), normal(z, c, rows, cols), normal(z, c, rows, cols)
    h0, dfinal, scale = normal(z, rows, cols), normal(z, rows, cols), normal(z, c, rows)
    gates = _gates(rng, (z, c, cols))
    with _mlx_code():
        want = (*scalar_chunked._states(a, b, h0),
                *scalar_chunked._reverse_states(a, g, dfinal, before),
                scalar_chunked._decays(gates)[0], scalar_chunked._row_dots(b, g),
                scalar_chunked._scaled_sum(b, scale, before))
    with simulate(dialect):
        got = (*chunked.pass_states(a, b, h0), *chunked.pass_cotangents(a, g, dfinal, before),
               chunked.decays(gates), chunked.row_dots(b, g), chunked.scaled_sum(b, scale, before))
    names = ["before", "final", "after", "dh0", "da", "decays", "row_dots", "scaled_sum"]
    for name, x, y in zip(names, got, want, strict=True):
        assert x.shape == y.shape, name
        np.testing.assert_allclose(np.array(x), np.array(y), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@given(lead=st.sampled_from([(1,), (2, 3), (3, 1, 2)]), steps=st.sampled_from([1, 2, 5, 32, 64]),
       seed=seeds)
def test_fused_gate_gradient_matches_mlx(dialect, lead, steps, seed):
    """``_gate_grad`` by its kernel against its MLX code: gates of exactly 0
    and 1, one step to a whole chunk, one or several leading axes."""
    if executor.available() is not None:
        pytest.skip(executor.available())
    rng = np.random.default_rng(seed)
    normal = functools.partial(_normal, rng)
    gates = _gates(rng, (*lead, steps))
    d_decay, dw, dcum, da = (normal(*lead, steps, steps), normal(*lead, steps),
                             normal(*lead, steps), normal(*lead))
    with _mlx_code():
        decay, cum = scalar_chunked._decays(gates)
        want = scalar_chunked._gate_grad(mx.matmul, gates, decay, cum, d_decay, dw, dcum, da)
    with pytest.MonkeyPatch.context() as patch, simulate(dialect) as sim:
        patch.setattr(scalar_chunked, "_fused", chunked.takes)
        got = scalar_chunked._gate_grad(mx.matmul, gates, decay, cum, d_decay, dw, dcum, da)
        mx.eval(got)
    assert {launch.name for launch in sim.launches} == {chunked.GATE_GRAD.name}
    assert got.shape == want.shape == gates.shape
    want = np.array(want)
    np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@given(lead=st.sampled_from([(1, 1), (2, 3)]), steps=st.sampled_from([1, 2, 5, 8, 32]),
       keys=st.sampled_from([1, 3, 4, 32, 41]), slow=st.booleans(), seed=seeds)
def test_fused_channel_scores_match_mlx(dialect, lead, steps, keys, slow, seed):
    """The per-channel scores with the chunk's gate products, and their
    backward, by their kernels against the MLX code: gates of exactly 0 and
    1 or all near 1 (products over the whole chunk that matter), one step to
    the GPU's chunk, channels fewer and more than a warp and not a multiple
    of the forward's four at a time."""
    if executor.available() is not None:
        pytest.skip(executor.available())
    rng = np.random.default_rng(seed)
    normal = functools.partial(_normal, rng)
    q, k, dqc, dkw = (normal(*lead, steps, keys) for _ in range(4))
    gates = _gates(rng, (*lead, steps, keys))
    gates = 0.96 + 0.04 * gates if slow else gates
    d_scores, da = normal(*lead, steps, steps), normal(*lead, keys, 1)
    mm = scalar_chunked.precise.matmul  # float32-accurate on a GPU too

    def both():
        return (*scalar_chunked._channel_scores(q, k, gates),
                *scalar_chunked._channel_scores_grad(mm, q, k, gates, d_scores, dqc, dkw, da))

    with _mlx_code():
        want = both()
    with pytest.MonkeyPatch.context() as patch, simulate(dialect) as sim:
        patch.setattr(scalar_chunked, "_fused", chunked.takes)
        got = both()
        mx.eval(got)
    assert {launch.name for launch in sim.launches} == {
        chunked.CHANNEL_SCORES.name, chunked.CHANNEL_SCORES_GRAD.name}
    names = ["scores", "q * cum", "k * w", "a", "dq", "dk", "dg"]
    for name, x, y in zip(names, got, want, strict=True):
        y = np.array(y)
        assert x.shape == y.shape, name
        np.testing.assert_allclose(np.array(x), y, rtol=1e-5, atol=1e-5 * np.abs(y).max(),
                                   err_msg=name)


def _chunk_inputs(seed, z, heads, c, steps, keys, values):
    """``q, k [z, c, steps, keys]``, ``v [z, heads, c, steps, values]`` and
    gates (some exactly 0 or 1) for a tile kernel's test, and the normal
    draws for more; skips where the kernel simulator cannot run."""
    if executor.available() is not None:
        pytest.skip(executor.available())
    rng = np.random.default_rng(seed)
    normal = functools.partial(_normal, rng)
    q, k = normal(z, c, steps, keys), normal(z, c, steps, keys)
    v = normal(z, heads, c, steps, values)
    return q, k, v, _gates(rng, (z, heads, c, steps)), normal


# The layouts the tile kernels take: heads first (values [Z, R, C, T, V], q
# and k [Z, C, T, K]), or time first (values [B, C, T, H, V], q and k [B, C,
# T, G, K]; head b * H + h is head z * R + r, group b * G + g is z) with the
# Z rows from the batch (B = Z) or from groups (B = 1, G = Z).
LAYOUTS = st.sampled_from(["heads first", "time first", "time first, groups"])


def _laid_out(x, layout):
    """``x [Z, R, C, T, V]`` (or ``[Z, C, T, K]``, one head) in ``layout``."""
    if layout == "heads first":
        return x
    rows = x.ndim == 4
    x = x[:, None] if rows else x
    z, r, c, t, v = x.shape
    b = z if layout == "time first" else 1
    x = x.reshape(b, z // b, r, c, t, v).transpose(0, 3, 4, 1, 2, 5)
    return mx.contiguous(x.reshape(b, c, t, z // b * r, v))


def _heads_first(x, layout, heads):
    """The inverse of ``_laid_out`` (``heads``: ``R``, None for ``[Z, C,
    T, K]``)."""
    if layout == "heads first":
        return x
    b, c, t, h, v = x.shape
    r = heads or 1
    x = x.reshape(b, c, t, h // r, r, v).transpose(0, 3, 4, 1, 2, 5)
    x = x.reshape(b * h // r, r, c, t, v)
    return x if heads else x[:, 0]


def _outputs_float64(q, k, v, g, before):
    """``chunk_outputs``'s formula in float64 NumPy, a chunk at a time."""
    q, k, v, g, before = (np.array(x, np.float64) for x in (q, k, v, g, before))
    y = np.zeros(v.shape)
    for z, r, c in np.ndindex(*v.shape[:3]):
        gates = g[z, r, c]
        decay = _decays_float64(gates)
        y[z, r, c] = ((q[z, c] @ k[z, c].T * decay) @ v[z, r, c]
                      + np.cumprod(gates)[:, None] * (q[z, c] @ before[z, r, c]))
    return y


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@given(z=st.integers(1, 2), heads=st.sampled_from([1, 2, 3, 6]), c=st.integers(1, 3),
       steps=st.sampled_from(chunked.TILED_STEPS), keys=st.sampled_from([16, 32, 48]),
       values=st.sampled_from([8, 40, 96, 128]), layout=LAYOUTS, seed=seeds)
def test_tiled_outputs_match_float64(dialect, z, heads, c, steps, keys, values, layout, seed):
    """``chunk_outputs`` on matrix tiles against float64: every chunk length
    it takes, several pieces of keys, values in tiles of 8 (up to 16 tiles),
    heads sharing ``q`` and ``k``, gates of exactly 0 and 1, the values' rows
    scaled, in each of the values' layouts; in bfloat16 the float32 outputs
    rounded. CUDA's tiles multiply in TF32 (10-bit mantissas; the simulator
    rounds as the GPU does), Metal's in float32."""
    q, k, v, g, normal = _chunk_inputs(seed, z, heads, c, steps, keys, values)
    before, vs = normal(z, heads, c, keys, values), normal(z, heads, c, steps)
    tf = layout != "heads first"
    with simulate(dialect):
        q_, k_, v_ = (_laid_out(x, layout) for x in (q, k, v))
        y = chunked.chunk_outputs(q_, k_, v_, vs, g, before, time_first=tf)
        y_half = chunked.chunk_outputs(q_, k_, v_, vs, g, before, mx.bfloat16, time_first=tf)
    y, y_half = (_heads_first(x, layout, heads) for x in (y, y_half))
    want = _outputs_float64(q, k, v * vs[..., None], g, before)
    tol = 3e-3 if dialect == "cuda" else 1e-5
    np.testing.assert_allclose(np.array(y), want, rtol=tol, atol=tol * np.abs(want).max())
    assert y_half.dtype == mx.bfloat16  # the same sums, rounded once on the way out
    assert mx.array_equal(y_half, y.astype(mx.bfloat16)).item()


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@given(z=st.integers(1, 3), c=st.integers(1, 3), steps=st.sampled_from(chunked.TILED_STEPS),
       keys=st.sampled_from([16, 48, 128]), half=st.booleans(), layout=LAYOUTS, seed=seeds)
def test_chunk_scores_match_float64(dialect, z, c, steps, keys, half, layout, seed):
    """``chunk_scores`` (what heads that share ``q`` and ``k`` read) against
    float64 on and below the diagonal, where the tile kernels read them:
    float32-accurate in both dialects (split TF32 products on CUDA), from
    ``q`` and ``k`` in float32 or bfloat16, in each layout."""
    q, k, *_ = _chunk_inputs(seed, z, 1, c, steps, keys, 8)
    if half:
        q, k = (x.astype(mx.bfloat16) for x in (q, k))
    with simulate(dialect):
        got = chunked.chunk_scores(*(_laid_out(x, layout) for x in (q, k)),
                                   time_first=layout != "heads first")
    q, k = (np.array(x.astype(mx.float32), np.float64) for x in (q, k))
    want = q @ k.swapaxes(-1, -2)
    lower = np.tril(np.ones((steps, steps), bool))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.array(got)[..., lower], want[..., lower], rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())


def _decays_float64(g):
    """A chunk's decays ``D[t, s] = prod_{s<r<=t} g[r]`` (0 for ``t < s``) in float64."""
    steps = g.shape[0]
    return np.array([[np.prod(g[s + 1:t + 1]) if t >= s else 0.0 for s in range(steps)]
                     for t in range(steps)])


def _gate_grad_float64(g, decay, d_decay, dw, dcum, da):
    """The gates' gradient of one chunk in float64 by ``_gate_grad``'s
    formula (``decay`` those of ``g``); with every term's magnitude in place
    of it, the scale of its rounding."""
    d_decay = d_decay.copy()
    d_decay[-1] += dw  # w = D[T-1, :]
    dcum = dcum.copy()
    dcum[-1] += da  # a = cum[T-1]
    full = d_decay @ decay.T  # [t, r-1]: sum_s dD[t, s] D[r-1, s]
    cum_before = np.concatenate([[1.0], np.cumprod(g)[:-1]])  # cum[r-1]
    via_rows = np.concatenate([[0.0], (decay[:, 1:] * full[:, :-1]).sum(0)])
    return via_rows + cum_before * (dcum @ decay)


def _scores_grad_float64(q, k, v, vs, dy, g, dend, dw, dcum, da):
    """``chunk_scores_grad``'s formulas in float64 NumPy, a chunk at a time,
    and the magnitude of the terms of its gates' gradient."""
    q, k, v, vs, dy, g, dend, dw, dcum, da = (
        np.array(x, np.float64) for x in (q, k, v, vs, dy, g, dend, dw, dcum, da))
    steps = q.shape[2]
    later = np.arange(steps)[:, None] >= np.arange(steps)[None, :]  # t >= s
    dv = np.zeros(v.shape)
    dscores = np.zeros(g.shape[:1] + g.shape[2:] + (steps,))  # summed over the heads
    dvs, dg, dg_terms = np.zeros(g.shape), np.zeros(g.shape), np.zeros(g.shape)
    for z, r, c in np.ndindex(*v.shape[:3]):
        gates, rows = g[z, r, c], vs[z, r, c, :, None] * v[z, r, c]
        decay = _decays_float64(gates)
        scores, dyv = q[z, c] @ k[z, c].T, dy[z, r, c] @ rows.T
        u = (scores * decay).T @ dy[z, r, c] + (decay[-1, :, None] * k[z, c]) @ dend[z, r, c]
        dv[z, r, c], dvs[z, r, c] = vs[z, r, c, :, None] * u, (u * v[z, r, c]).sum(-1)
        dscores[z, c] += dyv * decay
        ends = dw[z, r, c], dcum[z, r, c], da[z, r, c]
        dg[z, r, c] = _gate_grad_float64(gates, decay, dyv * scores * later, *ends)
        magnitude = (np.abs(dy[z, r, c]) @ np.abs(rows).T
                     * (np.abs(q[z, c]) @ np.abs(k[z, c]).T) * later)
        dg_terms[z, r, c] = _gate_grad_float64(gates, decay, magnitude,
                                               *(np.abs(x) for x in ends))
    return dv, dvs, dscores, dg, dg_terms


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@given(z=st.integers(1, 2), heads=st.sampled_from([1, 2, 3]), c=st.integers(1, 2),
       steps=st.sampled_from(chunked.TILED_STEPS), keys=st.sampled_from([16, 32, 48]),
       values=st.sampled_from([8, 24, 96, 128]), layout=LAYOUTS, seed=seeds)
def test_tiled_scores_grad_matches_float64(dialect, z, heads, c, steps, keys, values, layout,
                                           seed):
    """``chunk_scores_grad`` on matrix tiles against float64: every chunk
    length (one or two bands of 32 rows), several pieces of keys, values in
    pieces of 16 or of 8, heads sharing ``q`` and ``k``, gates of exactly 0
    and 1, the values' rows scaled; the values' gradients with the states'
    part; the gradients of the scores and of the gates float32-accurate in
    both dialects, the latter relative to the magnitude of its terms (it
    sums them with cancellation); in each of the values' layouts."""
    q, k, v, g, normal = _chunk_inputs(seed, z, heads, c, steps, keys, values)
    dy = normal(z, heads, c, steps, values)
    dend, vs = normal(z, heads, c, keys, values), normal(z, heads, c, steps)
    ends = normal(z, heads, c, steps), normal(z, heads, c, steps), normal(z, heads, c)
    q_, k_, v_, dy_ = (_laid_out(x, layout) for x in (q, k, v, dy))
    with simulate(dialect):
        got = chunked.chunk_scores_grad(q_, k_, v_, vs, dy_, g, dend, *ends,
                                        time_first=layout != "heads first")
    got = [np.array(x) for x in (_heads_first(got[0], layout, heads), *got[1:])]
    *want, dg_terms = _scores_grad_float64(q, k, v, vs, dy, g, dend, *ends)
    for name, x, y in zip(["dv", "dvs", "dscores"], got, want, strict=False):
        # the scores' products are float32-accurate on CUDA too (split TF32);
        # the values' gradients' products with P are TF32
        tol = 3e-3 if dialect == "cuda" and name != "dscores" else 1e-5
        assert x.shape == y.shape, name
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * np.abs(y).max(), err_msg=name)
    assert got[3].shape == want[3].shape
    np.testing.assert_array_less(np.abs(got[3] - want[3]), 1e-5 * dg_terms + 1e-30, "dg")


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@given(z=st.integers(1, 2), heads=st.sampled_from([1, 2, 5]), c=st.integers(1, 3),
       steps=st.sampled_from(chunked.TILED_STEPS), keys=st.sampled_from([16, 32, 128, 256]),
       values=st.sampled_from([8, 24, 64]), half=st.booleans(), transposed=st.booleans(),
       layout=LAYOUTS, seed=seeds)
def test_summed_state_products_match_float64(dialect, z, heads, c, steps, keys, values, half,
                                             transposed, layout, seed):
    """``summed_state_products`` against float64: every chunk length, keys
    up to 32 tiles, values in pieces of 16 or of 8, one to five heads
    summed, scales of exactly 0 and 1 (the gates), plus the scores'
    gradient (or its transpose) times the rows; the value rows and the rows
    in float32 or bfloat16 (read as they come; the result then rounded to
    bfloat16 once), in each layout."""
    rows, _, x, scale, normal = _chunk_inputs(seed, z, heads, c, steps, keys, values)
    x, rows = (a.astype(mx.bfloat16) if half else a for a in (x, rows))
    states, dqk = normal(z, heads, c, keys, values), normal(z, c, steps, steps)
    with simulate(dialect):
        got = chunked.summed_state_products(_laid_out(x, layout), scale, states, dqk,
                                            _laid_out(rows, layout), transposed,
                                            time_first=layout != "heads first")
    assert got.dtype == rows.dtype
    got = np.array(_heads_first(got, layout, None).astype(mx.float32))
    want, size = _einsum_float64("zrctv,zrct,zrckv->zctk", x, scale, states)
    intra, intra_size = _einsum_float64("zcst,zcsk->zctk" if transposed else "zcts,zcsk->zctk",
                                        dqk, rows)
    want, size = want + intra, size + intra_size
    tol = 3e-3 if dialect == "cuda" else 1e-5
    rounding = 2.0**-8 * np.abs(want) if half else 0.0  # bfloat16's half an ulp
    assert got.shape == want.shape
    np.testing.assert_array_less(np.abs(got - want), tol * size.max() + rounding + 1e-30)


def _einsum_float64(spec, *arrays):
    """``np.einsum(spec, *arrays)`` in float64, and the same of their
    magnitudes (the scale of its rounding)."""
    arrays = [np.array(a.astype(mx.float32), np.float64) for a in arrays]
    return np.einsum(spec, *arrays), np.einsum(spec, *map(np.abs, arrays))


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@given(z=st.integers(1, 2), heads=st.sampled_from([1, 2, 3]), c=st.integers(1, 3),
       steps=st.sampled_from(chunked.TILED_STEPS), keys=st.sampled_from([16, 48, 128]),
       values=st.sampled_from([8, 24, 64, 128]), half=st.booleans(), layout=LAYOUTS, seed=seeds)
def test_state_row_sums_match_float64(dialect, z, heads, c, steps, keys, values, half, layout,
                                      seed):
    """``chunk_state_row_sums`` against float64: every chunk length, keys in
    pieces of 16 (up to 8), values in tiles of 8 (up to 16), heads sharing
    the rows ``q``, the rows in float32 or bfloat16 in each of the values'
    layouts; CUDA's products with the states in TF32."""
    q, _, v, _, normal = _chunk_inputs(seed, z, heads, c, steps, keys, values)
    v = v.astype(mx.bfloat16) if half else v
    states = normal(z, heads, c, keys, values)
    with simulate(dialect):
        got = np.array(chunked.chunk_state_row_sums(_laid_out(q, layout), _laid_out(v, layout),
                                                    states, time_first=layout != "heads first"))
    want, size = _einsum_float64("zrctv,zctk,zrckv->zrct", v, q, states)
    tol = 3e-3 if dialect == "cuda" else 1e-5
    assert got.shape == want.shape
    np.testing.assert_array_less(np.abs(got - want), tol * size + 1e-30)


def _states_float64(k, v, vs, g, h0):
    """``chunk_states``'s recurrence in float64 NumPy, a chunk at a time."""
    k, v, vs, g, h = (np.array(x, np.float64) for x in (k, v, vs, g, h0))
    v = v * vs[..., None]
    before = np.zeros(v.shape[:3] + h.shape[-2:])
    for c in range(v.shape[2]):
        before[:, :, c] = h
        gates = g[:, :, c]  # [Z, R, T]
        w = np.array([np.prod(gates[..., s + 1:], axis=-1) for s in range(gates.shape[-1])])
        local = np.einsum("zsk,zrs,zrsv->zrkv", k[:, c], np.moveaxis(w, 0, -1), v[:, :, c])
        h = np.prod(gates, axis=-1)[..., None, None] * h + local
    return before, h


def _cotangents_float64(q, dy, g, dfinal, before):
    """``chunk_cotangents``'s recurrence in float64 NumPy, newest chunk first."""
    q, dy, g, y, before = (np.array(x, np.float64) for x in (q, dy, g, dfinal, before))
    after, da = np.zeros(before.shape), np.zeros(before.shape[:3])
    for c in reversed(range(before.shape[2])):
        after[:, :, c] = y
        da[:, :, c] = (y * before[:, :, c]).sum((-1, -2))
        cum = np.cumprod(g[:, :, c], axis=-1)  # [Z, R, T]
        y = (np.prod(g[:, :, c], axis=-1)[..., None, None] * y
             + np.einsum("ztk,zrt,zrtv->zrkv", q[:, c], cum, dy[:, :, c]))
    return after, y, da


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@pytest.mark.parametrize("direction", ["states", "cotangents"])
@given(z=st.integers(1, 2), heads=st.integers(1, 2), c=st.integers(1, 4),
       steps=st.sampled_from(chunked.TILED_STEPS), keys=st.sampled_from([16, 48, 80, 128]),
       values=st.sampled_from([8, 40, 96, 128]), initial=st.booleans(), layout=LAYOUTS,
       seed=seeds)
def test_tiled_carries_match_float64(dialect, direction, z, heads, c, steps, keys, values,
                                     initial, layout, seed):
    """``chunk_states`` and ``chunk_cotangents`` (the state cotangents newest
    chunk first, and the chunk gate products' gradient summed over the
    threadgroups' blocks) on matrix tiles against float64: every chunk length
    (one to three pieces a chunk), the state split into blocks of rows and of
    columns (80 keys in blocks of 16, 96 values in blocks of 32), heads
    sharing ``k`` or ``q``, gates of exactly 0 and 1, several chunks, the
    values (or the outputs' gradient) in each of their layouts; with an
    initial state, or without (``chunk_states`` from zeros it is not given,
    ``chunk_cotangents`` with no cotangent for it)."""
    if executor.available() is not None:
        pytest.skip(executor.available())
    rng = np.random.default_rng(seed)
    normal = functools.partial(_normal, rng)
    rows, values_ = normal(z, c, steps, keys), normal(z, heads, c, steps, values)
    gates, start = _gates(rng, (z, heads, c, steps)), normal(z, heads, keys, values)
    if direction == "states":  # the values' rows scaled
        start = start if initial else mx.zeros_like(start)
        args = (rows, values_, normal(z, heads, c, steps), gates, start)
        run, reference, names = chunked.chunk_states, _states_float64, ["before", "final"]
        given = args if initial else (*args[:4], None)
    else:  # and the states entering the chunks
        args = (rows, values_, gates, start, normal(z, heads, c, keys, values))
        run = functools.partial(chunked.chunk_cotangents, initial=initial)
        reference, names, given = _cotangents_float64, ["after", "dh0", "da"], args
    laid_out = (_laid_out(given[0], layout), _laid_out(given[1], layout), *given[2:])
    with simulate(dialect):
        got = run(*laid_out, time_first=layout != "heads first")
    tol = 3e-3 if dialect == "cuda" else 1e-5
    wants = reference(*args)
    sizes = [np.abs(want).max() for want in wants]
    if direction == "cotangents":  # da sums K*V products: its size is that of the terms
        sizes[2] = np.abs(wants[0] * np.array(args[4], np.float64)).sum((-1, -2)).max()
    if direction == "cotangents" and not initial:  # no cotangent for an initial state
        assert got[1] is None
        got, wants, sizes, names = ([x[0], x[2]] for x in (got, wants, sizes, names))
    for name, x, want, size in zip(names, got, wants, sizes, strict=True):
        x = np.array(x)
        assert x.shape == want.shape, name
        np.testing.assert_allclose(x, want, rtol=tol, atol=tol * size, err_msg=name)


_TILE_KERNELS = ("chunk_outputs", "chunk_scores_grad", "summed_state_products",
                 "chunk_state_row_sums")


def _record_tile_kernels(patch, seen: list):
    """Append to ``seen`` the name of each run of the kernels for the
    chunks' outputs and their backward."""
    for name in _TILE_KERNELS:
        patch.setattr(chunked, name, functools.partial(_recorded, getattr(chunked, name), seen))


def _recorded(kernel, seen, *args):
    seen.append(kernel.__name__)
    return kernel(*args)


_TILED_SIZES = {
    "ssd": st.fixed_dictionaries({"HG": st.sampled_from([(1, 1), (2, 1), (4, 1), (2, 2), (4, 2)]),
                                  "P": st.sampled_from([8, 16]), "N": st.just(16),
                                  "A_per_channel": st.just(False)}).map(
        lambda d: {"H": d["HG"][0], "G": d["HG"][1], **{k: d[k] for k in d if k != "HG"}}),
    "gla": st.fixed_dictionaries({"H": st.integers(1, 2), "K": st.just(16),
                                  "V": st.sampled_from([8, 24]),
                                  "g_per_channel": st.just(False)}),
}


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@pytest.mark.parametrize("kind", ["ssd", "gla"])
@given(data=st.data())
def test_tiled_form_matches_spec(dialect, kind, data):
    """Half-precision calls whose chunks' outputs and their backward run on
    matrix tiles (the forward keeps only the chunk states; the backward
    rebuilds the rest):
    values, final state and every gradient against SPEC section 3, with and
    without an initial state, lengths that end inside a chunk."""
    steps = data.draw(st.sampled_from(chunked.TILED_STEPS), label="chunk")
    call = make_call(
        kind, np.random.default_rng(data.draw(seeds, label="seed")),
        sizes=data.draw(_TILED_SIZES[kind], label="sizes"),
        length=data.draw(st.integers(steps, 2 * steps + 5), label="L"),
        batch=data.draw(st.sampled_from([(), (2,)]), label="batch"),
        dtype=data.draw(st.sampled_from([mx.bfloat16, mx.float16]), label="dtype"),
        with_state=data.draw(st.booleans(), label="with_state"),
        specials=0.1,
    )
    tiled = []
    with pytest.MonkeyPatch.context() as patch, _gpu_form(dialect, patch):
        patch.setitem(scalar_chunked.CHUNK, "gpu", steps)
        _record_tile_kernels(patch, tiled)
        tol = TOLERANCE[call.inputs[0].dtype]
        assert_matches_spec(call, *run(call, "fallback"), tol)
        seed = data.draw(seeds, label="cotangent seed")
        cotangent = cotangents(call, np.random.default_rng(seed))
        _, grads = run_vjp(call, "fallback", cotangent)
        assert_gradients_match(call, grads, cotangent, tol, seed + 1)
    assert set(tiled) == set(_TILE_KERNELS), "a part did not run on matrix tiles"


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
@pytest.mark.parametrize("kind,sizes", [
    ("ssd", {"H": 4, "G": 2, "P": 16, "N": 16, "A_per_channel": False}),
    ("gla", {"H": 2, "K": 16, "V": 24, "g_per_channel": False}),
])
def test_no_initial_state_is_a_zero_one(dialect, kind, sizes):
    """``state=None`` on the matrix tiles (the chunk states start from zeros
    they are never given; no cotangent is written for the state) gives the
    outputs, the final state and every input's gradient of an explicit zero
    state, bit for bit."""
    call = make_call(kind, np.random.default_rng(3), sizes=sizes, length=70, batch=(2,),
                     dtype=mx.bfloat16)
    tiled = []
    with pytest.MonkeyPatch.context() as patch, _gpu_form(dialect, patch):
        patch.setitem(scalar_chunked.CHUNK, "gpu", 32)
        _record_tile_kernels(patch, tiled)
        zeros = mx.zeros_like(recurops.scan(kind, *call.inputs)[1])
        weights = mx.array(np.random.default_rng(4).normal(size=call.inputs[0].shape[:-1]))

        def step(state):
            def loss(*inputs):
                y, final = recurops.scan(kind, *inputs, state=state, impl="fallback")
                return (y.astype(mx.float32).sum(-1) * weights).sum() + final.sum(), (y, final)

            argnums = tuple(range(len(call.inputs)))
            (_, outputs), grads = mx.value_and_grad(loss, argnums)(*call.inputs)
            return [np.array(x.astype(mx.float32)) for x in (*outputs, *grads)]

        for got, want in zip(step(None), step(zeros), strict=True):
            np.testing.assert_array_equal(got, want)
    assert set(tiled) == set(_TILE_KERNELS), "a part did not run on matrix tiles"


@pytest.mark.skipif(gpu_backend() is None, reason="no Metal or CUDA GPU")
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("kind,sizes", [
    ("ssd", {"H": 4, "G": 2, "P": 64, "N": 64, "A_per_channel": False}),
    ("gla", {"H": 2, "K": 128, "V": 128, "g_per_channel": False}),
])
def test_tiled_form_on_gpu_matches_spec(kind, sizes, with_state, monkeypatch):
    """On a real GPU: a bfloat16 call whose 64-step chunks' outputs and
    their backward run on the matrix tiles (three chunks, the last one
    partial, with an initial state and without), values and every gradient
    against SPEC section 3."""
    call = make_call(kind, np.random.default_rng(7), sizes=sizes, length=150, batch=(2,),
                     dtype=mx.bfloat16, with_state=with_state)
    tiled = []
    _record_tile_kernels(monkeypatch, tiled)
    tol = TOLERANCE[mx.bfloat16]
    assert_matches_spec(call, *run(call, "fallback"), tol)
    cotangent = cotangents(call, np.random.default_rng(8))
    _, grads = run_vjp(call, "fallback", cotangent)
    assert_gradients_match(call, grads, cotangent, tol, 9)
    assert set(tiled) == set(_TILE_KERNELS), "a part did not run on matrix tiles"


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
def test_tiled_lengths_and_batches_compile_nothing_new(dialect, monkeypatch):
    """The tile kernels bake the chunk length, head dims, dtypes and layout,
    never the batch or the length: after one training call, calls of other
    lengths (whole chunks or not) and batch sizes compile nothing."""
    from recurops.kernels import chassis

    if executor.available() is not None:
        pytest.skip(executor.available())
    monkeypatch.setattr(chassis, "COMPILED", set())  # this test's compiles alone
    monkeypatch.setattr(scalar_chunked, "_on_gpu", lambda: True)
    monkeypatch.setattr(scalar_chunked, "_fused", chunked.takes)
    monkeypatch.setitem(scalar_chunked.CHUNK, "gpu", 16)
    tiled = []
    _record_tile_kernels(monkeypatch, tiled)

    def train(batch, length):
        call = make_call("ssd", np.random.default_rng(length), length=length, batch=(batch,),
                         sizes={"H": 2, "G": 1, "P": 8, "N": 16, "A_per_channel": False},
                         dtype=mx.bfloat16, with_state=True)
        def loss(*inputs):
            return recurops.scan("ssd", *inputs, state=call.state, impl="fallback")[0].sum()

        mx.eval(mx.grad(loss, tuple(range(len(call.inputs))))(*call.inputs))

    with simulate(dialect):
        train(1, 32)
        compiled = set(chassis.COMPILED)
        for batch, length in ((2, 40), (3, 64), (1, 100)):
            train(batch, length)
    assert set(tiled) == set(_TILE_KERNELS)
    assert chassis.COMPILED == compiled


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
def test_per_channel_lengths_compile_few_kernels(dialect, monkeypatch):
    """The per-channel kernels bake the chunk length in: a call shorter than
    a chunk takes the power of two at or above its length, so after a short
    and a long call new lengths compile nothing."""
    from recurops.kernels.chassis import COMPILED

    if executor.available() is not None:
        pytest.skip(executor.available())
    monkeypatch.setattr(scalar_chunked, "_on_gpu", lambda: True)
    monkeypatch.setattr(scalar_chunked, "_fused", chunked.takes)
    rng = np.random.default_rng(0)

    def train(length):
        q, k, v = (_normal(rng, 1, length, 1, 4) for _ in range(3))
        g = _gates(rng, (1, length, 1, 4))
        loss = lambda *a: recurops.scan("gla", *a, impl="fallback")[0].sum()  # noqa: E731
        mx.eval(mx.grad(loss, (0, 1, 2, 3))(q, k, v, g))

    with simulate(dialect):
        train(5)
        train(40)
        compiled = set(COMPILED)
        for length in (6, 7, 8, 33, 64, 100, 257):
            train(length)
    assert COMPILED == compiled
    steps = {dict(template)["STEPS"] for name, template in compiled
             if name == chunked.CHANNEL_SCORES.name}
    assert {8, 32} <= steps


@pytest.mark.parametrize("kind", ["ssd", "gla"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_forward_mode_differentiation_says_it_is_not_supported(kind, per_channel):
    """``mx.jvp`` through the chunked form (decays per head or per channel)
    raises a clear error: its forward runs with gradients stopped, which
    would otherwise give zero tangents."""
    sizes = {**EXAMPLE_SIZES[kind], f"{'A' if kind == 'ssd' else 'g'}_per_channel": per_channel}
    call = make_call(kind, np.random.default_rng(0), sizes=sizes, length=40)
    x, *rest = call.inputs
    with pytest.raises(NotImplementedError, match="mx.jvp"):
        mx.jvp(lambda x: recurops.scan(kind, x, *rest, impl="fallback")[0], [x],
               [mx.ones_like(x)])


@pytest.mark.parametrize("dtype, to", [(mx.bfloat16, mx.float32), (mx.float32, mx.bfloat16),
                                       (mx.float32, mx.float32)])
@pytest.mark.parametrize("axes", [(0, 2, 1, 3), (2, 0, 1)])
def test_relayout_is_a_transpose_and_a_cast(dtype, to, axes):
    """``scalar_chunked.relayout``: the values and the gradient of a
    transpose and a cast, whichever dtype is narrower."""
    shape = (2, 3, 5, 4)[:len(axes)]
    x = mx.random.normal(shape, key=mx.random.key(0)).astype(dtype)
    cotangent = mx.random.normal(x.transpose(axes).shape, key=mx.random.key(1)).astype(to)

    def plain(x):
        return x.transpose(axes).astype(to)

    out, (grad,) = mx.vjp(lambda x: scalar_chunked.relayout(x, axes, to), [x], [cotangent])
    want, (want_grad,) = mx.vjp(plain, [x], [cotangent])
    assert out[0].dtype == to and out[0].shape == want[0].shape
    assert grad.dtype == dtype and grad.shape == x.shape
    assert mx.array_equal(out[0], want[0]).item()
    assert mx.array_equal(grad, want_grad).item()

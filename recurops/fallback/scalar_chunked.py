"""Chunked matmul form of the gated matrix recurrence, hand-written backward.

    S_h[t] = g_h[t] S_h[t-1] + k[t] v_h[t]^T        S_h: [K, V]
    o_h[t] = S_h[t]^T q[t]

``q`` and ``k`` may be shared by ``R`` heads (Mamba-2 groups: ``q = C``,
``k = B``, ``v = dt * x``; GLA is ``R = 1``). Heads come before time
(``v [Z, R, L, V]``), so each head's chunk states ``[C, K, V]`` stay in one
block that the state passing reads and writes without transposes. This is the form both the
``"gla"`` kind with per-head gates and the ``"ssd"`` kind with ``A [H]`` take
(``scalar_gate_chunked_scan``); gates per key channel (``"gla"`` with
``g [..., L, H, K]``, ``"ssd"`` with ``A [H, N]``) take the same form with
per-channel decays (``channel_gate_chunked_scan``, at the end), whose
within-chunk scores and their backward are fused kernels on a GPU.

The sequence is cut into chunks of ``T`` steps. Inside a chunk

    o = (q k^T * D_h) v_h + cum_h * (q S_before)

with ``D[t, s] = prod_{s < r <= t} g[r]`` (a cumulative product of a masked
copy of the gates) and ``cum[t] = prod_{r <= t} g[r]``. Chunk end states
follow ``S_end = a S_before + k^T (w * v)``, ``a = cum[T-1]``,
``w[s] = D[T-1, s]``, run over chunks (``_states``) by a blocked associative
scan. On a GPU the matmuls are MLX's, and the passes over whole arrays that
would take MLX several kernels each (the decays ``D``, the chunk-state
passing and its reverse with the gradient of ``a``, the outputs from their
two parts, the row sums of products and the gates' gradient in the
backward) run as small fused kernels
(``recurops.kernels.chunked``), float32 like the rest. With half-precision
inputs the forward is two kernels on the tensor cores instead (the chunk
states, then the outputs: ``_tiled_forward``), and so is most of the
backward (``_tiled_backward``).

The backward pass is written by hand (``mx.custom_function``): it is the
same chunked form run backwards, with a reverse scan for the state
cotangents. Gate gradients use only products of gates (no division by
cumulative products, no logarithm), so gates of exactly 0 and 1 are exact:

    dg[r] = sum_t D[t, r] * (sum_s dD[t, s] D[r-1, s] + dcum[t] cum[r-1])

which is one small ``T x T x T`` matmul per chunk. The forward keeps only the
per-chunk states, the decays ``D``, ``q k^T`` and ``q S_before`` for the
backward: memory is O(L (K + V + T) + (L / T) K V) per head, never a state
per time step.

Decay factors below ``sqrt`` of the smallest normal float are set to zero
(``_flush``): subnormal products of gates made the CPU matmuls several times
slower, and such a factor weights its term far below float rounding.

Work is split over CPU threads (one MLX CPU stream per core, at most 8;
``RECUROPS_CPU_THREADS`` overrides) along the independent batch x group axis
when MLX's default device is the CPU: MLX's CPU backend runs each stream on
its own thread, and the BLAS of its Linux wheel is single-threaded.
"""

from __future__ import annotations

import functools

import mlx.core as mx

from ..kernels import chunked
from . import precise
from .threads import split_rows

# --------------------------------------------------------------------------
# scan over chunks with a gate that broadcasts against the state


def _sl(x: mx.array, start=None, stop=None, step=None) -> mx.array:
    return x[:, start:stop:step]


_BLOCK = 4  # scan block: a fixed number of steps run one after another


def _states(a: mx.array, b: mx.array, h0: mx.array) -> tuple[mx.array, mx.array]:
    """``h[c] = a[c] * h[c-1] + b[c]`` along axis 1 from ``h[-1] = h0``.

    Returns the state *before* each step, ``[h0, h[0], ..., h[C-2]]``, and
    the last one ``h[C-1]``. ``a`` broadcasts against ``b`` (it may be much
    smaller). On a GPU one fused kernel (``kernels.chunked``), otherwise a
    blocked scan.
    """
    if _fused(b):
        return chunked.pass_states(a, b, h0)
    return _states_by_scan(a, b, h0)


def _reverse_states(a: mx.array, g: mx.array, dfinal: mx.array, before: mx.array):
    """Cotangents of the chunk states: ``Y[c] = a[c] Y[c+1] + g[c]``, ``Y[C] = dfinal``.

    Returns ``(Y[1..C], Y[0], da)``: the cotangent of the state at the end of
    each chunk, that of the initial state, and the gradient of ``a`` given the
    states ``before`` each chunk (``sum Y[c+1] * before[c]`` over the axes
    ``a`` broadcasts along).
    """
    if _fused(g):
        return chunked.pass_cotangents(a, g, dfinal, before)
    rev = slice(None, None, -1)
    after, dh0 = _states_by_scan(a[:, rev], g[:, rev], dfinal)
    after = after[:, rev]
    shared = tuple(i for i in range(2, a.ndim) if a.shape[i] == 1)
    return after, dh0, (after * before).sum(axis=shared, keepdims=True)


def _row_dots(x: mx.array, y: mx.array) -> mx.array:
    """``(x * y).sum(-1)``, in one fused pass on a GPU."""
    threads = x.size // max(x.shape[-1], 1) * chunked.WARP  # a warp a row
    return chunked.row_dots(x, y) if _fused(x, y, extent=threads) else (x * y).sum(-1)


def _scaled_sum(x: mx.array, s: mx.array, y: mx.array) -> mx.array:
    """``x * s[..., None] + y``, in one fused pass on a GPU."""
    return chunked.scaled_sum(x, s, y) if _fused(x, s, y, extent=x.size) else x * s[..., None] + y


@mx.custom_function
def _scaled_rows(s: mx.array, x: mx.array) -> mx.array:
    """``s[..., None] * x`` (``s [...]``, ``x [..., N]`` of one dtype), whose
    backward takes the gradient of ``s`` as fused row dot products on a GPU."""
    return s[..., None] * x


@_scaled_rows.vjp
def _scaled_rows_vjp(primals, cotangent, _):
    s, x = primals
    return _row_dots(cotangent, x), cotangent * s[..., None]


def relayout(x: mx.array, axes: tuple[int, ...], dtype: mx.Dtype) -> mx.array:
    """``x.transpose(axes).astype(dtype)``, contiguous, with the transposing
    copy made in the narrower of the two dtypes, forwards and backwards.

    On MLX's CUDA backend a cast of a transposed array is two copies (the
    transpose, then the cast), and the cotangent of a transpose followed by a
    reshape is a cast and a transposing float32 copy.
    """
    return _relayout(tuple(axes), dtype)(x)


def _moved(x: mx.array, axes: tuple[int, ...], dtype: mx.Dtype) -> mx.array:
    if dtype.size < x.dtype.size:
        return mx.contiguous(x.astype(dtype).transpose(axes))
    return mx.contiguous(x.transpose(axes).astype(dtype))


@functools.cache
def _relayout(axes: tuple[int, ...], dtype: mx.Dtype):
    back = tuple(sorted(range(len(axes)), key=axes.__getitem__))

    @mx.custom_function
    def move(x):
        return _moved(x, axes, dtype)

    @move.vjp
    def move_vjp(primals, cotangent, _):
        return _moved(cotangent, back, primals[0].dtype)

    return move


def _on_gpu() -> bool:
    return mx.default_device().type == mx.DeviceType.gpu


def _fused(*arrays, extent: int = 0) -> bool:
    """Whether these arrays go to the chunked form's fused kernels
    (``kernels.chunked``): on a GPU, when the kernels take them."""
    return _on_gpu() and chunked.takes(*arrays, extent=extent)


def _states_by_scan(a: mx.array, b: mx.array, h0: mx.array) -> tuple[mx.array, mx.array]:
    """``_states`` as a blocked associative scan: the steps inside blocks of
    ``_BLOCK`` run one after another (a fixed count, whatever the length),
    the block totals are scanned recursively, and one pass applies each
    block's carry-in. O(C) work in a few passes over ``b``, O(log C) depth,
    exact for any ``a`` (products only, no division).
    """
    n = b.shape[1]
    m = _BLOCK
    if n <= 2 * m:
        hs = [h0[:, None]]
        for i in range(n):
            hs.append(_sl(a, i, i + 1) * hs[-1] + _sl(b, i, i + 1))
        return mx.concatenate(hs[:-1], axis=1), hs[-1][:, 0]
    blocks = n // m
    head = blocks * m
    a_blk = _sl(a, 0, head).reshape(a.shape[0], blocks, m, *a.shape[2:])
    b_blk = _sl(b, 0, head).reshape(b.shape[0], blocks, m, *b.shape[2:])
    # inside each block, from a zero state: local states and running gate products
    hs, ps = [b_blk[:, :, 0]], [a_blk[:, :, 0]]
    for j in range(1, m):
        hs.append(a_blk[:, :, j] * hs[-1] + b_blk[:, :, j])
        ps.append(_flush(a_blk[:, :, j] * ps[-1]))
    carry, last = _states_by_scan(ps[-1], hs[-1], h0)  # state entering each block
    before = mx.stack([carry] + [h + p * carry for h, p in zip(hs[:-1], ps[:-1])], axis=2)
    before = before.reshape(b.shape[0], head, *before.shape[3:])
    if head == n:
        return before, last
    tail = [last[:, None]]
    for i in range(head, n):
        tail.append(_sl(a, i, i + 1) * tail[-1] + _sl(b, i, i + 1))
    return mx.concatenate([before] + tail[:-1], axis=1), tail[-1][:, 0]


# --------------------------------------------------------------------------
# one chunked block: forward and backward on [Z, C, T, ...] arrays


def _decays(g: mx.array) -> tuple[mx.array, mx.array]:
    """``g [..., T]`` -> (D [..., T(t), T(s)], cum [..., T]), products only."""
    if _fused(g, extent=g.size * g.shape[-1]):  # D [..., T, T]
        return chunked.decays(g), _cumulative(g)
    steps = g.shape[-1]
    idx = mx.arange(steps)
    after = idx[:, None] > idx[None, :]  # [r, s]: r > s
    masked = mx.where(after, mx.expand_dims(g, -1), 1.0)  # [..., r, s]
    from_s = mx.cumprod(masked, axis=-2)  # [..., t, s] = prod_{s<r<=t} g[r] (1 if t<=s)
    return _flush(from_s, keep=idx[:, None] >= idx[None, :]), _cumulative(g)


def _cumulative(g: mx.array) -> mx.array:
    """``cum [..., T]``: ``cum[t] = prod_{r <= t} g[r]``."""
    return _flush(mx.cumprod(g, axis=-1))


def _to_end(g: mx.array) -> mx.array:
    """``w [..., T]``: ``w[s] = prod_{s < r < T} g[r]`` (``D[T-1, s]``)."""
    return _flush(mx.cumprod(g, axis=-1, reverse=True, inclusive=False))


def _flush(x: mx.array, keep: mx.array | None = None) -> mx.array:
    """Decay factors below ``sqrt(smallest normal)`` (2^-63 in float32) -> 0,
    and those where ``keep`` is false.

    Long products of small gates underflow into subnormal numbers, and x86
    CPUs take a microcode assist on every operation that touches one: the
    matmuls that read them (or their products with the data) run several
    times slower. A factor this small weights its term 2^-40 below float32
    rounding of the undecayed terms, so dropping it changes results by less
    than rounding; gates of exactly 0 and 1 are untouched. Only on the CPU
    (``_flushes``).
    """
    if not _flushes():
        return x if keep is None else mx.where(keep, x, 0.0)
    drop = mx.abs(x) < mx.finfo(x.dtype).smallest_normal ** 0.5
    return mx.where(drop if keep is None else drop | ~keep, 0.0, x)


def _flushes() -> bool:
    """Whether ``_flush`` drops tiny factors: on the CPU only (GPUs take
    subnormal numbers at full speed, and the flush costs passes over the
    ``[T, T]`` decays)."""
    return not _on_gpu()


def _tr(x: mx.array) -> mx.array:
    return mx.swapaxes(x, -1, -2)


def _heads_sum(x: mx.array) -> mx.array:
    """Sum over the heads axis 1 (the ``R`` heads that share ``q`` and ``k``)."""
    return x[:, 0] if x.shape[1] == 1 else x.sum(1)


def _heads_folded(fn, a, *arrays):
    """``_states`` or ``_reverse_states`` (``fn``) over the chunks of each
    head: ``a [Z,R,C]`` and ``arrays [Z,R,...]`` with the heads folded into Z
    (``a`` as ``[Z*R,C,1,1]``); results unfolded (a gradient of ``a`` as ``a``)."""
    z, r, c = a.shape
    results = fn(a.reshape(z * r, c, 1, 1), *(x.reshape(z * r, *x.shape[2:]) for x in arrays))
    shapes = [arrays[0].shape, arrays[1].shape, a.shape]  # per chunk, initial, decays
    return tuple(x.reshape(shape) for x, shape in zip(results, shapes))


def _forward(mm, q, k, v, g, h0):
    """q, k [Z,C,T,K]; v [Z,R,C,T,V]; g [Z,R,C,T]; h0 [Z,R,K,V]."""
    decay, cum = _decays(g)  # [Z,R,C,T,T], [Z,R,C,T]
    k_t = mx.contiguous(_tr(k))  # [Z,C,K,T]: plain (untransposed) matmuls are faster
    qk = mm(q, k_t)  # [Z,C,T,T]
    intra = mm(qk[:, None] * decay, v)  # [Z,R,C,T,V]
    w = decay[..., -1, :, None]  # [Z,R,C,T,1]: decay from each step to the chunk's end
    local = mm(k_t[:, None], v * w)  # [Z,R,C,K,V]
    before, final = _heads_folded(_states, cum[..., -1], local, h0)
    raw = mm(q[:, None], before)  # [Z,R,C,T,V]
    y = _scaled_sum(raw, cum, intra)
    return y, final, before, raw, qk, decay


def _tiled_forward(mm, q, k, v, vs, g, *h0, dtype=mx.float32, time_first=False):
    """``_forward`` as two kernels on matrix tiles, the chunk states
    (``chunked.chunk_states``) and the outputs (``chunked.chunk_outputs``,
    written in ``dtype``), with the values' rows ``vs * v`` formed inside
    them (``q``, ``k`` and ``v`` in any float dtype, and with ``y`` time
    first where ``time_first``: ``chunked.chunk_outputs``); keeps only the
    states entering each chunk. Without ``h0`` the state starts at zeros."""
    before, final = chunked.chunk_states(k, v, vs, g, h0[0] if h0 else None, time_first)
    return chunked.chunk_outputs(q, k, v, vs, g, before, dtype, time_first), final, before


def _tiled_backward(mm, q, k, v, vs, g, *rest, time_first=False):
    """The backward of ``_tiled_forward`` (``rest``: ``h0`` if it took one,
    then ``before``, ``dy``, ``dfinal``): ``_backward``'s steps, with the
    state cotangents (``chunked.chunk_cotangents``), the row sums with ``q
    S`` and ``k Y`` (``chunked.chunk_state_row_sums``), the backward within
    the chunks with the values' gradients and the gates' gradient
    (``chunked.chunk_scores_grad``) and the gradients of ``q`` and ``k``
    from their two parts (``chunked.summed_state_products``) on matrix
    tiles: no decays ``[T, T]`` or their gradient in memory, ``dy`` read
    and every gradient but the gates' written in the caller's dtypes and
    layout."""
    tf = time_first
    *h0, before, dy, dfinal = rest
    dy = mx.contiguous(dy)  # read by four kernels: one copy if it comes strided, not four
    cum, w = _cumulative(g), _to_end(g)  # [Z,R,C,T]
    dcum = chunked.chunk_state_row_sums(q, dy, before, tf)  # [Z,R,C,T]: dy . (q S)
    dend, dh0, da = chunked.chunk_cotangents(q, dy, g, dfinal, before, tf, initial=bool(h0))
    dw = vs * chunked.chunk_state_row_sums(k, v, dend, tf)  # [Z,R,C,T]: (vs v) . (k Y)
    dv, dvs, dqk, dg = chunked.chunk_scores_grad(q, k, v, vs, dy, g, dend, dw, dcum, da, tf)
    dq = chunked.summed_state_products(dy, cum, before, dqk, k, False, tf)
    dk_ = chunked.summed_state_products(v, w * vs, dend, dqk, q, True, tf)
    return dq, dk_, dv, dvs, dg, *([dh0] if h0 else [])


def _backward(mm, q, k, v, g, h0, before, raw, qk, decay, dy, dfinal):
    """The backward of ``_forward``."""
    cum = _cumulative(g)  # [Z,R,C,T]; the forward kept decay [Z,R,C,T,T]
    w = decay[..., -1, :, None]  # [Z,R,C,T,1]
    a = cum[..., -1]  # [Z,R,C]

    # inter-chunk output  y += cum * (q @ S_before)
    draw = dy * cum[..., None]  # [Z,R,C,T,V]
    dcum = _row_dots(dy, raw)  # [Z,R,C,T]
    dq = _heads_sum(mm(draw, _tr(before)))  # [Z,C,T,K]

    # state cotangents: dS_before[c] = G[c] + a[c] dS_end[c], dS_end[c] = dS_before[c+1],
    # G = q^T draw the cotangent of S_before from the outputs
    local_grad = mm(_tr(q)[:, None], draw)  # [Z,R,C,K,V]
    dend, dh0, da = _heads_folded(_reverse_states, a, local_grad, dfinal, before)

    # local states  S_end = a S_before + k^T (w * v)
    dk_ = _heads_sum(mm(v * w, _tr(dend)))  # [Z,C,T,K]
    p = mm(k[:, None], dend)  # [Z,R,C,T,V]
    dw = _row_dots(p, v)  # [Z,R,C,T]

    # intra-chunk attention  y += (qk * D) @ v: the gradients of v, of the
    # scores qk and of the decays D
    d_att = mm(dy, _tr(v))  # [Z,R,C,T,T]
    dv_ = mm(_tr(qk[:, None] * decay), dy, add=p * w)
    d_scores, d_decay = d_att * decay, d_att * qk[:, None]
    dq, dk_ = _through_scores(mm, q, k, d_scores, dq, dk_)
    return dq, dk_, dv_, _gate_grad(mm, g, decay, cum, d_decay, dw, dcum, da), dh0


def _through_scores(mm, q, k, d_scores, dq, dk_):
    """``dq`` and ``dk`` with the parts through the scores ``q k^T`` added
    (shared by the heads: ``d_scores`` summed over them)."""
    dqk = _heads_sum(d_scores)  # [Z,C,T,T]
    return mm(dqk, k, add=dq), mm(_tr(dqk), q, add=dk_)


def _gate_grad(mm, g, decay, cum, d_decay, dw, dcum, da):
    """Gradient of the gates ``g [..., T]`` (``D`` their decays) from those of
    ``D`` (``d_decay``), of ``w = D[T-1, :]`` (``dw``), of ``cum`` (``dcum``)
    and of ``a = cum[T-1]`` (``da``), by products only:

        dg[r] = sum_t D[t, r] (sum_s dD'[t, s] D[r-1, s] + dcum'[t] cum[r-1])

    with ``dD' = dD + e_{T-1} dw`` and ``dcum' = dcum + e_{T-1} da``;
    ``D[-1, :] = 0`` and ``cum[-1] = 1``.
    """
    full = mm(d_decay, _tr(decay))  # [..., t, r-1] = sum_s dD[t, s] D[r-1, s]
    if _fused(g, full, extent=full.size):
        return chunked.gate_grad(g, full, dw, dcum, da, cum)
    via_decay = (decay[..., :, 1:] * full[..., :, :-1]).sum(-2)  # [..., T-1]: r >= 1
    via_w = decay[..., -1, 1:] * mm(dw[..., None, :], _tr(decay))[..., 0, :-1]
    lead = decay.shape[:-2]
    shifted = mx.concatenate([mx.zeros((*lead, 1), decay.dtype), via_decay + via_w], axis=-1)
    dcum = mx.concatenate([dcum[..., :-1], dcum[..., -1:] + da[..., None]], axis=-1)
    cum_shift = mx.concatenate([mx.ones((*lead, 1), cum.dtype), cum[..., :-1]], axis=-1)
    return shifted + cum_shift * mm(dcum[..., None, :], decay)[..., 0, :]


def _checkpointed(forward, backward, inputs: int, by_rows: bool = True):
    """``forward`` (of ``inputs`` arrays; outputs y, the final state and what
    ``backward`` needs) with ``backward`` as its vjp, both split over CPU
    streams along the leading axis if ``by_rows`` (every array's leading axis
    ``Z``).

    The forward runs on the inputs with their gradients stopped, and a custom
    function takes its outputs in with the inputs and hands y and the final
    state on: so the backward holds the saved arrays, as inputs, and not y
    with them (the outputs of one MLX primitive keep each other alive until
    the last is freed)."""
    run = split_rows if by_rows else lambda fn, arrays, _: fn(*arrays)

    @mx.custom_function
    def hand_on(*arrays):  # the inputs, y, the final state, the saved arrays
        return arrays[inputs], arrays[inputs + 1]

    @hand_on.vjp
    def hand_on_vjp(primals, cotangents, _):
        dy, dfinal = cotangents
        grads = run(backward, (*primals[:inputs], *primals[inputs + 2:], dy, dfinal),
                    primals[0].shape[0])
        # the forward's outputs take no gradient (their inputs' is stopped)
        return (*grads, *(mx.broadcast_to(mx.zeros((), a.dtype), a.shape)
                          for a in primals[inputs:]))

    @hand_on.jvp
    def hand_on_jvp(primals, tangents):
        raise NotImplementedError("recurops.scan supports reverse-mode differentiation "
                                  "(mx.grad, mx.vjp), not forward mode (mx.jvp)")

    def block(*arrays):
        stopped = tuple(mx.stop_gradient(a) for a in arrays)
        return hand_on(*arrays, *run(forward, stopped, arrays[0].shape[0]))

    return block


@functools.cache
def _block(form: str, exact_fp32: bool, dtype: mx.Dtype = mx.float32, time_first: bool = False,
           initial: bool = True):
    """The custom function of one form: ``"scalar"`` gates, ``"scalar-tiled"``
    (scalar gates, the forward, the state cotangents and the backward within
    the chunks on matrix tiles; the outputs in ``dtype``, the values time
    first where ``time_first``; without an initial state, zeros, where not
    ``initial``) or ``"channel"`` (per-channel gates).
    ``exact_fp32`` routes matmuls through ``precise.matmul`` (float32
    inputs: no TF32)."""
    mm = precise.matmul if exact_fp32 else precise.plain_matmul
    forward, backward = {
        "scalar": (_forward, _backward),
        "scalar-tiled": (functools.partial(_tiled_forward, dtype=dtype, time_first=time_first),
                         functools.partial(_tiled_backward, time_first=time_first)),
        "channel": (_channel_forward, _channel_backward),
    }[form]
    # the tiles run on a GPU (on the CPU only simulated), where nothing is split
    return _checkpointed(functools.partial(forward, mm), functools.partial(backward, mm),
                         inputs=5 + initial if form == "scalar-tiled" else 5,
                         by_rows=form != "scalar-tiled")


# Chunk lengths, chosen by measurement (benchmarks/chunk_sweep.py for per-head
# gates; an H100 A/B of 16, 32 and 64 steps for per-channel gates on a GPU). On
# the CPU per-channel gates keep short chunks: their MLX code builds [K, T, T]
# decays a chunk.
CHUNK = {"cpu": 32, "gpu": 64}
CHANNEL_CHUNK = {"cpu": 8, "gpu": 32}


def _tiles(steps: int, dk: int, dv: int, exact_fp32: bool) -> bool:
    """Whether chunks of ``steps`` run on matrix tiles (``_tiled_forward``):
    the tiles multiply in TF32 on CUDA, so for half-precision inputs only."""
    return not exact_fp32 and chunked.tiles_take(steps, dk, dv)


def uses_tiles(length: int, dk: int, dv: int, arrays) -> bool:
    """Whether ``scalar_gate_chunked_scan`` of ``length`` steps with these
    head dims runs on matrix tiles on a GPU, for a call on ``arrays``."""
    return _tiles(min(CHUNK["gpu"], length), dk, dv, precise.needs_exact_fp32(*arrays))


def scalar_gate_chunked_scan(q, k, v, g, h0, chunk: int | None = None, exact_fp32: bool = True,
                             dtype: mx.Dtype | None = None, v_scale: mx.array | None = None,
                             time_first: bool = False):
    """Chunked evaluation of the recurrence in the module docstring.

    q, k: [Z, L, K] (shared by the R heads of a group); v: [Z, R, L, V] in
    any float dtype, its rows scaled by ``v_scale [Z, R, L]`` where given
    (``ssd``'s ``dt * x``); g: [Z, R, L] linear-space gates; h0: [Z, R, K,
    V], or None for zeros (which the matrix tiles never have in memory);
    all but ``v`` float32/64. Returns y [Z, R, L, V] in ``dtype``
    (default ``q``'s) and the final state [Z, R, K, V].
    ``time_first``: q and k laid out [B, L, G, K] instead (group ``b * G +
    g`` being ``z``), v and y [B, L, H, V] (head ``b * H + h`` being head
    ``z * R + r``), q, k and v in any float dtype: the matrix tiles read and
    write these layouts as they are, the other forms take transposed
    float32 copies.
    ``exact_fp32=False`` lets matmuls use TF32 where MLX does (enough for
    half-precision inputs); True keeps them float32-accurate.
    """
    dtype = dtype or q.dtype
    z, r, length = g.shape
    dk, dv = q.shape[-1], v.shape[-1]
    steps = min(chunk or CHUNK["gpu" if _on_gpu() else "cpu"], length)
    c = -(-length // steps)
    scales = () if v_scale is None else (v_scale,)
    tiled = _tiles(steps, dk, dv, exact_fp32) and _fused(
        g, *scales, extent=z * r * c * max(max(dk, steps, 128) * dv, steps * steps))
    if h0 is None and not tiled:
        h0 = mx.zeros((z, r, dk, dv), g.dtype)
    if time_first and not tiled:
        b, _, h, _ = v.shape
        q, k = (relayout(x, (0, 2, 1, 3), g.dtype).reshape(z, length, dk) for x in (q, k))
        v = relayout(v, (0, 2, 1, 3), v.dtype).reshape(z, r, length, dv)
        y, final = scalar_gate_chunked_scan(q, k, v, g, h0, chunk, exact_fp32, dtype, v_scale)
        return relayout(y.reshape(b, h, length, dv), (0, 2, 1, 3), dtype), final
    if tiled and v_scale is None:  # the tiles scale every row
        v_scale = mx.ones(g.shape, g.dtype)
    pad = c * steps - length
    time_axis = 1 if time_first else 2
    if pad:
        q, k = (mx.pad(x, [(0, pad if axis == 1 else 0) for axis in range(x.ndim)])
                for x in (q, k))
        v = mx.pad(v, [(0, pad if axis == time_axis else 0) for axis in range(4)])
        g = mx.pad(g, [(0, 0), (0, 0), (0, pad)], constant_values=1.0)
        if v_scale is not None:
            v_scale = mx.pad(v_scale, [(0, 0), (0, 0), (0, pad)])
    g = g.reshape(z, r, c, steps)
    if tiled:  # the tiles read q, k and v as they come and scale v's rows themselves

        def chunks(x, axis):  # axis split into [C, T]; one copy if x comes strided
            return mx.contiguous(x).reshape(x.shape[:axis] + (c, steps) + x.shape[axis + 1:])

        initial = () if h0 is None else (h0,)
        y, final = _block("scalar-tiled", exact_fp32, dtype, time_first, bool(initial))(
            chunks(q, 1), chunks(k, 1), chunks(v, time_axis), v_scale.reshape(g.shape), g,
            *initial)
        y = y.reshape(v.shape)
    else:
        v = v.astype(q.dtype)
        if v_scale is not None:
            v = _scaled_rows(v_scale, v)
        rows = (q.reshape(z, c, steps, dk), k.reshape(z, c, steps, dk))
        y, final = _block("scalar", exact_fp32)(*rows, v.reshape(z, r, c, steps, dv), g, h0)
        y = y.reshape(v.shape).astype(dtype)
    if pad:
        y = y[:, :length] if time_first else y[:, :, :length]
    return y, final


# --------------------------------------------------------------------------
# one gate per key channel (GLA with g [..., L, H, K]); R = 1. The chunk's scores
# need a decay per channel, D[k, t, s]: on a GPU two kernels build them as
# running products in registers (kernels.chunked.channel_scores and its
# backward); the MLX code materializes them, [K, T, T] a chunk.


def _channel_decays(g: mx.array) -> tuple[mx.array, mx.array]:
    """``g [..., T, K]`` -> (D [..., K, T(t), T(s)], cum [..., K, T])."""
    return _decays(mx.swapaxes(g, -1, -2))


def _channel_scores(q, k, g):
    """The chunk's scores ``A[t, s] = sum_k q[t,k] k[s,k] D[k,t,s]``
    (``[Z,C,T,T]``), ``q * cum`` and ``k * w`` (``[Z,C,T,K]``; ``cum[t] =
    prod_{r<=t} g[r]``, ``w[s] = D[T-1, s]``) and ``a = cum[T-1]``
    (``[Z,C,K,1]``): one kernel on a GPU, else from the decays ``D [Z,C,K,T,T]``."""
    z, c, t, dk = q.shape
    if _fused(q, k, g, extent=z * c * t * max(t, dk)):
        scores, qc, kw, a = chunked.channel_scores(q, k, g)
        return scores, _tr(qc), _tr(kw), a[..., None]
    decay, cum = _channel_decays(g)  # [Z,C,K,T,T], [Z,C,K,T]
    qk = mx.swapaxes(q, -1, -2)[..., :, None] * mx.swapaxes(k, -1, -2)[..., None, :]
    return ((qk * decay).sum(axis=2), q * _tr(cum), k * _tr(decay[..., -1, :]),
            cum[..., -1:])


def _channel_scores_grad(mm, q, k, g, d_scores, dqc, dkw, da):
    """``(dq, dk, dg)`` of ``_channel_scores`` from the gradients of its
    outputs (``d_scores [Z,C,T,T]``, ``dqc`` and ``dkw`` ``[Z,C,T,K]``,
    ``da [Z,C,K,1]``): one kernel on a GPU, else by the decays and
    ``_gate_grad``'s formula."""
    z, c, t, dk = q.shape
    if _fused(q, k, g, d_scores, dqc, dkw, da, extent=z * c * t * max(t, dk)):
        return chunked.channel_scores_grad(q, k, g, d_scores, dqc, dkw, da[..., 0])
    decay, cum = _channel_decays(g)  # [Z,C,K,T,T], [Z,C,K,T]
    dcum = dqc * q
    dcum = mx.concatenate([dcum[:, :, :-1], dcum[:, :, -1:] + _tr(da)], axis=2)
    weighted = d_scores[:, :, None] * decay
    q_k, k_k = mx.swapaxes(q, -1, -2), mx.swapaxes(k, -1, -2)  # [Z,C,K,T]
    dq = _tr((weighted * k_k[..., None, :]).sum(-1)) + dqc * _tr(cum)
    dk_ = _tr((weighted * q_k[..., :, None]).sum(-2)) + dkw * _tr(decay[..., -1, :])
    d_decay = d_scores[:, :, None] * (q_k[..., :, None] * k_k[..., None, :])  # [Z,C,K,T,T]
    # the gates, as in _gate_grad, one channel at a time; w = D[T-1, :]
    d_decay = mx.concatenate(
        [d_decay[..., :-1, :], d_decay[..., -1:, :] + _tr(dkw * k)[..., None, :]], axis=-2
    )
    lead = decay.shape[:-2]
    shifted_t = mx.concatenate(
        [mx.zeros((*lead, t, 1), decay.dtype), _tr(decay[..., :-1, :])], axis=-1
    )
    cum_shift = mx.concatenate([mx.ones((*lead, 1), cum.dtype), cum[..., :-1]], axis=-1)
    m = mm(d_decay, shifted_t, add=_tr(dcum)[..., :, None] * cum_shift[..., None, :])
    return dq, dk_, _tr((decay * m).sum(-2))


def _channel_forward(mm, q, k, v, g, h0):
    """q, k, g [Z,C,T,K]; v [Z,C,T,V]; h0 [Z,K,V]."""
    scores, qc, kw, a = _channel_scores(q, k, g)
    local = mm(_tr(kw), v)  # [Z,C,K,V]
    before, final = _states(a, local, h0)
    y = mm(qc, before, add=mm(scores, v))
    return y, final, before, scores, qc, kw, a


def _channel_backward(mm, q, k, v, g, h0, before, scores, qc, kw, a, dy, dfinal):
    # inter-chunk output  y += qc @ S_before,  qc = q * cum
    dqc = mm(dy, _tr(before))  # [Z,C,T,K]
    local_grad = mm(_tr(qc), dy)  # [Z,C,K,V]
    dend, dh0, da = _reverse_states(a, local_grad, dfinal, before)  # [Z,C,K,V], [Z,C,K,1]

    # local states  S_end = a * S_before + kw^T v,  kw = k * w
    dkw = mm(v, _tr(dend))  # [Z,C,T,K]
    dv = mm(_tr(scores), dy, add=mm(kw, dend))

    # intra scores  y += scores @ v
    d_scores = mm(dy, _tr(v))  # [Z,C,T,T]
    dq, dk_, dg = _channel_scores_grad(mm, q, k, g, d_scores, dqc, dkw, da)
    return dq, dk_, dv, dg, dh0


def channel_gate_chunked_scan(q, k, v, g, h0, chunk: int | None = None, exact_fp32: bool = True):
    """The recurrence with one gate per key channel: ``S <- diag(g) S + k v^T``.

    q, k, g: [Z, L, K]; v: [Z, L, V]; h0: [Z, K, V] (None: zeros). Returns
    y [Z, L, V] and the final state [Z, K, V]. Same chunked form and hand-written
    backward as the scalar case with the decays kept per channel;
    ``chunk`` defaults to ``CHANNEL_CHUNK`` for the device.
    """
    z, length, dk = q.shape
    dv = v.shape[-1]
    if h0 is None:
        h0 = mx.zeros((z, dk, dv), g.dtype)
    # short calls take the power of two at or above their length: the GPU's
    # kernels bake the chunk length in, so a new short length compiles nothing
    shortest = 1 << (length - 1).bit_length()
    steps = min(chunk or CHANNEL_CHUNK["gpu" if _on_gpu() else "cpu"], shortest)
    pad = -length % steps
    if pad:
        widths = [(0, 0), (0, pad), (0, 0)]
        q, k, v = (mx.pad(x, widths) for x in (q, k, v))
        g = mx.pad(g, widths, constant_values=1.0)
    c = (length + pad) // steps
    y, final = _block("channel", exact_fp32)(
        q.reshape(z, c, steps, dk),
        k.reshape(z, c, steps, dk),
        v.reshape(z, c, steps, dv),
        g.reshape(z, c, steps, dk),
        h0,
    )
    y = y.reshape(z, c * steps, dv)
    return (y[:, :length] if pad else y), final

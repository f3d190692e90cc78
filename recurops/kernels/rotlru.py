"""Fused kernels for ``"rotlru"``: ``z <- a (cos + i sin) z + x`` on (u, w) pairs.

One thread per channel pair; the adjoint of the rotation-scale ``M`` is its
transpose, ``a (cos - i sin)``. The kernels read the sines as ``sn``
(``s`` is the tile entry of ``chassis.tiled_steps``). Small launches over
long sequences run spans of steps side by side (``kernels/spans.py``): each
span's end from zero and its product of rotation-scales, the state entering
each span (one thread a pair walking the spans), then the forward, one thread a
span and pair; the backward likewise, from each span's carry.
"""

import mlx.core as mx

from . import spans
from .chassis import (
    KernelPath,
    Source,
    checkpointed,
    chunk_prologue,
    common_unsupported,
    in_one_dtype,
    lanes,
    launch,
    segments,
    tiled_steps,
)

_PROLOGUE = """
    const int B = a_shape[0];
    const int L = a_shape[1];
    const int P = a_shape[2];
    const int NSEG = (L + SEG - 1) / SEG;
""" + chunk_prologue("(B * P + 31) / 32 * 32") + """
    if (idle || tid >= B * P) return;
    const int b = tid / P;
    const int p = tid % P;
    const int span_pair = (b * NC + chunk) * P + p;  // the span's pair of a [B, NC, P, 2] array
"""

_TILE = """
        float ac_t[TILE];  // a cos
        float as_t[TILE];  // a sin
        float xu_t[TILE];
        float xw_t[TILE];"""
_LOAD = """
            const int i = (b * L + t) * P + p;
            ac_t[s] = static_cast<float>(a[i]) * static_cast<float>(c[i]);
            as_t[s] = static_cast<float>(a[i]) * static_cast<float>(sn[i]);
            xu_t[s] = static_cast<float>(x[2 * i]);
            xw_t[s] = static_cast<float>(x[2 * i + 1]);"""

FORWARD = Source(
    "rotlru_fwd",
    inputs=("a", "c", "sn", "x", "starts", "plan"),
    outputs=("y", "ckpt"),
    body=_PROLOGUE + """
    float u = starts[2 * span_pair];
    float w = starts[2 * span_pair + 1];
    int k = (b * (NSEG + 1)) * P + p;
    if (chunk == 0) {
        ckpt[2 * k] = u;
        ckpt[2 * k + 1] = w;
    }
""" + tiled_steps(
        tile=_TILE,
        load=_LOAD,
        step="""
            const int i = (b * L + t) * P + p;
            const float nu = ac_t[s] * u - as_t[s] * w + xu_t[s];
            w = as_t[s] * u + ac_t[s] * w + xw_t[s];
            u = nu;
            y[2 * i] = static_cast<T>(u);
            y[2 * i + 1] = static_cast<T>(w);
            if ((t + 1) % SEG == 0 || t == L - 1) {
                k = (b * (NSEG + 1) + (t + SEG) / SEG) * P + p;
                ckpt[2 * k] = u;
                ckpt[2 * k + 1] = w;
            }""",
        first="t_first", end="t_end",
    ),
)

def _span_kernel(name: str, inputs: tuple, pair: tuple, output: str, sweep: str) -> Source:
    """A kernel of spans side by side: each span's sweep (``sweep``) from a
    zero complex value (the names in ``pair``), storing it as ``output`` and
    the span's product of rotation-scales (``mu + i mw``, which the sweep
    updates) as ``decays``."""
    re, im = pair
    return Source(
        f"rotlru_{name}",
        inputs=(*inputs, "plan"),
        outputs=(output, "decays"),
        body=_PROLOGUE + f"""
    float {re} = 0.0f;
    float {im} = 0.0f;
    float mu = 1.0f;  // the product of a (cos + i sin) so far
    float mw = 0.0f;""" + sweep + f"""
    {output}[2 * span_pair] = {re};
    {output}[2 * span_pair + 1] = {im};
    decays[2 * span_pair] = mu;
    decays[2 * span_pair + 1] = mw;
""",
    )


# Each span's end from zero and its product of rotation-scales.
ENDS = _span_kernel("ends", ("a", "c", "sn", "x"), ("u", "w"), "ends", tiled_steps(
    tile=_TILE, load=_LOAD, step="""
            const float nu = ac_t[s] * u - as_t[s] * w + xu_t[s];
            w = as_t[s] * u + ac_t[s] * w + xw_t[s];
            u = nu;
            const float nmu = ac_t[s] * mu - as_t[s] * mw;
            mw = as_t[s] * mu + ac_t[s] * mw;
            mu = nmu;""", first="t_first", end="t_end"))

# Each span's adjoint carry from zero at its end, and its product of rotation-scales.
CARRIES = _span_kernel("carries", ("a", "c", "sn", "dy"), ("cu", "cw"), "carries", """
    for (int t = t_end - 1; t >= t_first; --t) {
        const int i = (b * L + t) * P + p;
        const float ac = static_cast<float>(a[i]) * static_cast<float>(c[i]);
        const float as = static_cast<float>(a[i]) * static_cast<float>(sn[i]);
        const float gu = static_cast<float>(dy[2 * i]) + cu;
        const float gw = static_cast<float>(dy[2 * i + 1]) + cw;
        cu = ac * gu + as * gw;
        cw = ac * gw - as * gu;
        const float nmu = ac * mu - as * mw;
        mw = as * mu + ac * mw;
        mu = nmu;
    }""")

# The state entering each span from the spans' ends and rotation-scales,
# one thread a pair walking the spans (with ADJOINT, the carries leaving
# each span: newest first, conjugate rotation-scales).
PASS = Source(
    "rotlru_pass",
    inputs=("m", "e", "first"),
    outputs=("before",),
    body="""
    const int B = e_shape[0];
    const int NC = e_shape[1];
    const int P = e_shape[2];
    const int tid = THREAD_ID;
    if (tid >= B * P) return;
    const float sign = ADJOINT ? -1.0f : 1.0f;
    float u = first[2 * tid];
    float w = first[2 * tid + 1];
    for (int r = 0; r < NC; ++r) {
        const int chunk = ADJOINT ? NC - 1 - r : r;
        const int i = 2 * ((tid / P * NC + chunk) * P + tid % P);
        before[i] = u;
        before[i + 1] = w;
        const float mu = m[i];
        const float mw = sign * m[i + 1];
        const float nu = mu * u - mw * w + e[i];
        w = mw * u + mu * w + e[i + 1];
        u = nu;
    }
""",
)

BACKWARD = Source(
    "rotlru_bwd",
    inputs=("a", "c", "sn", "x", "ckpt", "dy", "dend", "plan"),
    outputs=("da", "dc", "ds", "dx", "dh0"),
    body=_PROLOGUE + """
    float cu = dend[2 * span_pair];      // dLoss/d(u, w)[t] from steps after t
    float cw = dend[2 * span_pair + 1];
    for (int sg = (t_end + SEG - 1) / SEG - 1; sg >= t_first / SEG; --sg) {
        const int t0 = sg * SEG;
        float before_u[SEG];  // (u, w)[t-1] for each step t of the segment
        float before_w[SEG];
        const int k = (b * (NSEG + 1) + sg) * P + p;
        float u = ckpt[2 * k];
        float w = ckpt[2 * k + 1];
        for (int r = 0; r < SEG; ++r) {  // steps past L repeat the last one, unused
            const int i = (b * L + ((t0 + r < L) ? t0 + r : L - 1)) * P + p;
            before_u[r] = u;
            before_w[r] = w;
            const float ac = static_cast<float>(a[i]) * static_cast<float>(c[i]);
            const float as = static_cast<float>(a[i]) * static_cast<float>(sn[i]);
            const float nu = ac * u - as * w + static_cast<float>(x[2 * i]);
            w = as * u + ac * w + static_cast<float>(x[2 * i + 1]);
            u = nu;
        }
        // tiles of the segment, newest first; unlike chassis.tiled_adjoint the bounds are
        // constants, so before_u/before_w are indexed by constants and stay in registers
        for (int end = SEG; end > 0; end -= TILE) {
            // the tile's inputs first, newest step first
            float a_t[TILE];
            float c_t[TILE];
            float s_t[TILE];
            float gu_t[TILE];
            float gw_t[TILE];
            for (int r = 0; r < TILE; ++r) {
                const int t = t0 + end - 1 - r;
                const int i = (b * L + (t < L ? t : L - 1)) * P + p;
                a_t[r] = static_cast<float>(a[i]);
                c_t[r] = static_cast<float>(c[i]);
                s_t[r] = static_cast<float>(sn[i]);
                gu_t[r] = static_cast<float>(dy[2 * i]);
                gw_t[r] = static_cast<float>(dy[2 * i + 1]);
            }
            for (int r = 0; r < TILE; ++r) {
                const int t = t0 + end - 1 - r;
                if (t >= L) continue;
                const int i = (b * L + t) * P + p;
                const float gu = gu_t[r] + cu;
                const float gw = gw_t[r] + cw;
                const float pu = before_u[end - 1 - r];
                const float pw = before_w[end - 1 - r];
                const float d_ac = gu * pu + gw * pw;  // dLoss/d(a cos)
                const float d_as = gw * pu - gu * pw;  // dLoss/d(a sin)
                dx[2 * i] = gu;
                dx[2 * i + 1] = gw;
                da[i] = c_t[r] * d_ac + s_t[r] * d_as;
                dc[i] = a_t[r] * d_ac;
                ds[i] = a_t[r] * d_as;
                cu = a_t[r] * (c_t[r] * gu + s_t[r] * gw);
                cw = a_t[r] * (c_t[r] * gw - s_t[r] * gu);
            }
        }
    }
    if (chunk == 0) {
        dh0[2 * tid] = cu;
        dh0[2 * tid + 1] = cw;
    }
""",
)

SEG = 32
# Steps whose inputs a kernel loads at once (SEG is a multiple of both).
# H100, bf16, B=8 L=2048 P=1024: forward 0.57-0.63 ms at 16 against 0.81-0.83 at 8.
FORWARD_TILE = 16
BACKWARD_TILE = 8


def _plan(a, state, backward=False):
    """The spans of the forward, or of the backward (``spans.plan``):
    ``(threads a span, spans, plan)``."""
    rows = lanes(a.shape[0] * a.shape[2])
    span, chunks = spans.plan("rotlru", rows, a.shape[1], state.size, backward)
    return rows, chunks, spans.plan_array(span, chunks)


def _pass(decays, parts, first, adjoint):
    """``h[s] = m[s] h[s-1] + parts[s]`` over the spans (complex, as ``(re,
    im)`` pairs on the last axis, ``m = decays``) from ``h[-1] = first``: the
    state before each span, ``[B, NC, P, 2]``. ``adjoint`` walks the spans
    newest first with the conjugates of ``m`` (the carries leaving each span)."""
    batch, chunks, pairs, _ = parts.shape
    (before,) = launch(PASS, (decays, parts, first.reshape(batch, pairs, 2)),
                       {"before": (parts.shape, mx.float32)},
                       threads=lanes(batch * pairs), template={"ADJOINT": int(adjoint)})
    return before


def _forward(a, c, s, x, state):
    batch, length, pairs = a.shape
    dtype, inputs = in_one_dtype(a, c, s, x)
    rows, chunks, plan = _plan(a, state)
    template = {"T": dtype, "SEG": SEG, "TILE": FORWARD_TILE} | spans.baked(chunks)
    starts = state[:, None]
    if chunks > 1:
        per_span = ((batch, chunks, pairs, 2), mx.float32)
        ends, decays = launch(ENDS, (*inputs, plan), {"ends": per_span, "decays": per_span},
                              threads=rows * chunks, template=template)
        starts = _pass(decays, ends, state, adjoint=False)
    return launch(
        FORWARD,
        (*inputs, starts, plan),
        {"y": (x.shape, dtype),
         "ckpt": ((batch, segments(length, SEG) + 1, 2 * pairs), mx.float32)},
        threads=rows * chunks,
        template=template,
    )


def _backward(dy, dfinal, ckpt, a, c, s, x, state):
    batch, _, pairs = a.shape
    dtype, inputs = in_one_dtype(a, c, s, x)
    f32 = mx.float32
    rows, chunks, plan = _plan(a, state, backward=True)
    template = {"T": dtype, "SEG": SEG, "TILE": BACKWARD_TILE} | spans.baked(chunks)
    dend = dfinal[:, None]
    if chunks > 1:
        per_span = ((batch, chunks, pairs, 2), f32)
        carries, decays = launch(CARRIES, (*inputs[:3], dy, plan),
                                 {"carries": per_span, "decays": per_span},
                                 threads=rows * chunks, template=template)
        # the carry leaving span s: that of span s + 1 from zero, plus span
        # s + 1's rotation-scale transposed (its conjugate) times its own
        dend = _pass(decays, carries, dfinal, adjoint=True)
    return launch(
        BACKWARD,
        (*inputs, ckpt, dy, dend, plan),
        {"da": (a.shape, f32), "dc": (a.shape, f32), "ds": (a.shape, f32),
         "dx": (x.shape, f32), "dh0": (state.shape, f32)},
        threads=rows * chunks,
        template=template,
    )


KERNEL = KernelPath(
    run=checkpointed(_forward, _backward),
    unsupported=lambda bound, arrays, backend: common_unsupported(arrays),
)

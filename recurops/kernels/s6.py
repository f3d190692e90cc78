"""Fused kernels for ``"s6"``, the Mamba-1 selective scan.

The state of a channel ``d`` is ``h[d, :]`` (``N`` values), split over
``NSPLIT`` consecutive lanes: lane ``j`` holds ``h[d, n]`` for
``n = i * NSPLIT + j`` (``NL = N / NSPLIT`` values, in registers). Sums over
``n`` (``y``, ``du``, ``ddelta``) are ``LANE_SUM``s over those lanes; the
gradients of ``B`` and ``C`` (sums over ``d``) are reduce-scattered over the
other lane bits (``chassis.scatter_sums``) and added atomically into their
outputs. Small launches over
long sequences run spans of steps side by side (``kernels/spans.py``): each
span's end from zero and its product of decays, the state entering each span,
then the forward, one set of threads a span; the backward likewise, from each
span's carry.
"""

import math

import mlx.core as mx

from . import spans
from .chassis import (
    KernelPath,
    Source,
    checkpointed,
    chunk_prologue,
    common_unsupported,
    in_one_dtype,
    lane_split,
    lanes,
    launch,
    segments,
    selective_adjoint,
    selective_sums,
    selective_tile,
    tile_steps,
    tiled_adjoint,
    tiled_steps,
)

_PROLOGUE = """
    const int B = delta_shape[0];
    const int L = delta_shape[1];
    const int D = delta_shape[2];
    const int NL = N / NSPLIT;  // state values per lane: n = i * NSPLIT + j
    const int DP = (D * NSPLIT + 31) / 32 * 32 / NSPLIT;  // a batch row's lanes fill whole warps
    const int NSEG = (L + SEG - 1) / SEG;
""" + chunk_prologue("B * DP * NSPLIT") + """
    const int j = tid % NSPLIT;
    const int d = (tid / NSPLIT) % DP;
    const int b = tid / (NSPLIT * DP);
    const bool active = d < D;
    // a [B, NC, D, N] array's value n = i * NSPLIT + j of the span's row: span_row + i * NSPLIT
    const int span_row = ((b * NC + chunk) * D + d) * N + j;
"""

_BC_BWD = selective_tile("e")


def _forward_tile(arrays: str) -> dict:
    """Tile declarations and loads of the forward passes: ``delta``, ``u``
    and the lane's values of ``B`` and ``C`` (those named in ``arrays``), as
    ``tile`` and ``load`` body texts."""
    declare, load = selective_tile("s", arrays)
    return dict(tile="""
        float dl_t[TILE];
        float u_t[TILE];""" + declare, load="""
            const int at = (b * L + t) * D + d;
            const int r = (b * L + t) * N + j;
            dl_t[s] = active ? static_cast<float>(delta[at]) : 0.0f;
            u_t[s] = active ? static_cast<float>(u[at]) : 0.0f;""" + load)

FORWARD = Source(
    "s6_fwd",
    inputs=("u", "delta", "A", "Bm", "Cm", "starts", "plan"),
    outputs=("y", "ckpt"),
    body=_PROLOGUE + """
    if (idle) return;  // whole warps only
    float h[NL];
    float an[NL];  // the lane's values of A's row d
    for (int i = 0; i < NL; ++i) {
        const int n = i * NSPLIT + j;
        an[i] = active ? A[d * N + n] : 0.0f;
        h[i] = active ? starts[span_row + i * NSPLIT] : 0.0f;
        if (active && chunk == 0) ckpt[((b * (NSEG + 1)) * D + d) * N + n] = h[i];
    }
""" + tiled_steps(
        **_forward_tile("BC"),
        step="""
            float out = 0.0f;
            for (int i = 0; i < NL; ++i) {
                h[i] = EXP(dl_t[s] * an[i]) * h[i] + dl_t[s] * bs[s * NL + i] * u_t[s];
                out += cs[s * NL + i] * h[i];
            }
            out = LANE_SUM(out, 1, NSPLIT / 2);
            if (active && j == 0) y[(b * L + t) * D + d] = static_cast<T>(out);
            if (active && ((t + 1) % SEG == 0 || t == L - 1)) {
                const int k = ((b * (NSEG + 1) + (t + SEG) / SEG) * D + d) * N + j;
                for (int i = 0; i < NL; ++i) ckpt[k + i * NSPLIT] = h[i];
            }""",
        first="t_first", end="t_end",
    ),
)

def _span_kernel(name: str, inputs: tuple, value: str, output: str, sweep: str) -> Source:
    """A kernel of spans side by side: each span's sweep (``sweep``) from a
    zero ``value`` array, storing it as ``output`` and the span's product of
    decays (the sweep multiplies each step's into ``decay``) as ``decays``."""
    return Source(
        f"s6_{name}",
        inputs=(*inputs, "plan"),
        outputs=(output, "decays"),
        body=_PROLOGUE + f"""
    if (idle) return;  // whole warps only
    float {value}[NL];
    float an[NL];
    float decay[NL];
    for (int i = 0; i < NL; ++i) {{
        an[i] = active ? A[d * N + i * NSPLIT + j] : 0.0f;
        {value}[i] = 0.0f;
        decay[i] = 1.0f;
    }}""" + sweep + f"""
    if (active) {{
        for (int i = 0; i < NL; ++i) {{
            {output}[span_row + i * NSPLIT] = {value}[i];
            decays[span_row + i * NSPLIT] = decay[i];
        }}
    }}
""",
    )


# Each span's end from zero and its product of decays.
ENDS = _span_kernel("ends", ("u", "delta", "A", "Bm"), "h", "ends", tiled_steps(
    **_forward_tile("B"),
    step="""
            for (int i = 0; i < NL; ++i) {
                const float e = EXP(dl_t[s] * an[i]);
                h[i] = e * h[i] + dl_t[s] * bs[s * NL + i] * u_t[s];
                decay[i] *= e;
            }""",
    first="t_first", end="t_end",
))

# Each span's adjoint carry from zero at its end, and its product of decays.
CARRIES = _span_kernel("carries", ("delta", "A", "Cm", "dy"), "carry", "carries", """
    for (int t = t_end - 1; t >= t_first; --t) {
        const int at = (b * L + t) * D + d;
        const int r = (b * L + t) * N + j;
        const float dl = active ? static_cast<float>(delta[at]) : 0.0f;
        const float g_out = active ? static_cast<float>(dy[at]) : 0.0f;
        for (int i = 0; i < NL; ++i) {
            const float e = EXP(dl * an[i]);
            carry[i] = e * (carry[i] + static_cast<float>(Cm[r + i * NSPLIT]) * g_out);
            decay[i] *= e;
        }
    }""")

BACKWARD = Source(
    "s6_bwd",
    inputs=("u", "delta", "A", "Bm", "Cm", "ckpt", "dy", "dend", "plan"),
    outputs=("du", "ddelta", "dA", "dB", "dC", "dh0"),
    body=_PROLOGUE + """
    if (idle) return;  // whole warps only
    float carry[NL];   // dLoss/dh[t] from steps after t
    float dA_acc[NL];
    float an[NL];  // the lane's values of A's row d
    for (int i = 0; i < NL; ++i) {
        an[i] = active ? A[d * N + i * NSPLIT + j] : 0.0f;
        carry[i] = active ? dend[span_row + i * NSPLIT] : 0.0f;
        dA_acc[i] = 0.0f;
    }
    float before[SEG * NL];  // h[t-1] for each step t of the segment
    for (int s = (t_end + SEG - 1) / SEG - 1; s >= t_first / SEG; --s) {
        const int t0 = s * SEG;
        const int t1 = (t0 + SEG < L) ? t0 + SEG : L;
        float h[NL];
        const int k = ((b * (NSEG + 1) + s) * D + d) * N + j;
        for (int i = 0; i < NL; ++i) h[i] = active ? ckpt[k + i * NSPLIT] : 0.0f;
        for (int t = t0; t < t1; ++t) {
            const int at = (b * L + t) * D + d;
            const int r = (b * L + t) * N + j;
            const float dl = active ? static_cast<float>(delta[at]) : 0.0f;
            const float uu = active ? static_cast<float>(u[at]) : 0.0f;
            for (int i = 0; i < NL; ++i) {
                before[(t - t0) * NL + i] = h[i];
                h[i] = EXP(dl * an[i]) * h[i] + dl * static_cast<float>(Bm[r + i * NSPLIT]) * uu;
            }
        }
""" + tiled_adjoint(
        tile="""
                float dls[TILE];
                float us[TILE];
                float gs[TILE];  // dy""" + _BC_BWD[0],
        load="""
                    const int at = (b * L + t) * D + d;
                    const int r = (b * L + t) * N + j;
                    dls[e] = active ? static_cast<float>(delta[at]) : 0.0f;
                    us[e] = active ? static_cast<float>(u[at]) : 0.0f;
                    gs[e] = active ? static_cast<float>(dy[at]) : 0.0f;""" + _BC_BWD[1],
        step="""
                    const int at = (b * L + t) * D + d;
                    const int r = (b * L + t) * N + j;
                    const float dl = dls[e];
                    const float uu = us[e];
                    const float g_out = gs[e];
                    float dcs[NL];  // the lane's parts of the step's C and B gradients
                    float dbs[NL];
                    float du_t = 0.0f;
                    float ddl = 0.0f;
                    for (int i = 0; i < NL; ++i) {
                        const float decay = EXP(dl * an[i]);
                        const float prev = before[(t - t0) * NL + i];""" + selective_adjoint(
                            "dl", "uu") + """
                        du_t += gt * dl * bn;
                        ddl += gt * (an[i] * decay * prev + bn * uu);
                        dA_acc[i] += gt * dl * decay * prev;
                        carry[i] = decay * gt;
                    }""" + selective_sums("channels d") + """
                    du_t = LANE_SUM(du_t, 1, NSPLIT / 2);
                    ddl = LANE_SUM(ddl, 1, NSPLIT / 2);
                    if (active && j == 0) {
                        du[at] = du_t;
                        ddelta[at] = ddl;
                    }""",
    ) + """    }
    if (active) {
        for (int i = 0; i < NL; ++i) {
            if (chunk == 0) dh0[(b * D + d) * N + i * NSPLIT + j] = carry[i];
            dA[span_row + i * NSPLIT] = dA_acc[i];  // the span's part
        }
    }
""",
)


def _seg(n: int) -> int:
    return 32 if n // lane_split(n) <= 16 else 16


# Steps a backward tile loads: on the H100 (bf16, forward+backward, B=8
# L=2048 D=1536 N=16) 4.53-4.88 ms at 2 against 4.66-5.02 at 1 and 5.08-5.10
# at 8, the tiles of the forward.
BACKWARD_TILE = 2


def _template(dtype, n, tile):
    return {"T": dtype, "N": n, "NSPLIT": lane_split(n), "SEG": _seg(n), "TILE": tile}


def _plan(u, n, state, backward=False):
    """The spans of the forward, or of the backward (``spans.plan``):
    ``(threads a span, spans, plan)``."""
    rows = u.shape[0] * lanes(u.shape[2] * lane_split(n))
    span, chunks = spans.plan("s6", rows, u.shape[1], state.size, backward)
    return rows, chunks, spans.plan_array(span, chunks)


def _forward(u, delta, A, B, C, state):
    batch, length, width = u.shape
    n, seg = A.shape[1], _seg(A.shape[1])
    dtype, (u, delta, B, C) = in_one_dtype(u, delta, B, C)
    A = A.astype(mx.float32)
    rows, chunks, plan = _plan(u, n, state)
    template = _template(dtype, n, tile_steps(n)) | spans.baked(chunks)
    starts = state[:, None]
    if chunks > 1:
        per_span = ((batch, chunks, width, n), mx.float32)
        ends, decays = launch(ENDS, (u, delta, A, B, plan), {"ends": per_span, "decays": per_span},
                              threads=rows * chunks, template=template)
        starts = spans.entering_states(decays, ends, state)
    return launch(
        FORWARD,
        (u, delta, A, B, C, starts, plan),
        {"y": (u.shape, dtype),
         "ckpt": ((batch, segments(length, seg) + 1, width, n), mx.float32)},
        threads=rows * chunks,
        template=template,
    )


def _backward(dy, dfinal, ckpt, u, delta, A, B, C, state):
    batch, length, width = u.shape
    n = A.shape[1]
    dtype, (u_, delta_, B_, C_) = in_one_dtype(u, delta, B, C)
    f32 = mx.float32
    A_ = A.astype(f32)
    rows, chunks, plan = _plan(u, n, state, backward=True)
    template = _template(dtype, n, BACKWARD_TILE) | spans.baked(chunks)
    dend = dfinal[:, None]
    if chunks > 1:
        per_span = ((batch, chunks, width, n), f32)
        carries, decays = launch(CARRIES, (delta_, A_, C_, dy, plan),
                                 {"carries": per_span, "decays": per_span},
                                 threads=rows * chunks, template=template)
        dend = spans.leaving_carries(decays, carries, dfinal)
    du, ddelta, dA, dB, dC, dh0 = launch(
        BACKWARD,
        (u_, delta_, A_, B_, C_, ckpt, dy, dend, plan),
        {"du": (u.shape, f32), "ddelta": (u.shape, f32),
         "dA": ((batch, chunks, width, n), f32),
         "dB": (B.shape, f32), "dC": (C.shape, f32), "dh0": (state.shape, f32)},
        threads=rows * chunks,
        template=template,
        init_value=0.0,
    )
    return du, ddelta, dA.sum((0, 1)), dB, dC, dh0


def _unsupported(bound, arrays, backend):
    if bound.dims["N"] > 64:
        return f"N={bound.dims['N']} > 64 does not fit the kernel's registers"
    dims = bound.dims
    ckpt = math.prod(bound.batch) * (dims["L"] // _seg(dims["N"]) + 2) * dims["D"] * dims["N"]
    return common_unsupported(arrays, ckpt)


KERNEL = KernelPath(run=checkpointed(_forward, _backward), unsupported=_unsupported)

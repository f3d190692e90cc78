"""Fused kernels for ``"ssd"``, the Mamba-2 scan.

The state of a head is ``h [P, N]``. Each row ``h[p, :]`` is split over
``NSPLIT`` consecutive lanes: lane ``j`` holds ``h[p, n]`` for
``n = i * NSPLIT + j`` (``NL = N / NSPLIT`` values, in registers). Sums over
``n`` (the output ``y[p]``, ``dx[p]``) are ``LANE_SUM``s over those lanes;
sums over ``p`` (the gradients of ``B`` and ``C``) are reduce-scattered over
the other lane bits (``chassis.scatter_sums``) and added atomically into
their outputs; ``dt``'s is a ``WARP_SUM``, added likewise.

The forward stores the state every ``SPAN`` steps (256, at most ``SEG *
SUBS``; shorter when a small launch runs its spans side by side,
``kernels/spans.py``). The backward recomputes a span once from its checkpoint, keeping the state at
the start of each ``SEG``-step piece in scratch; then, piece by piece from
the newest, recomputes the piece's states and runs the adjoint sweep. The
backward may split a row over more lanes than the forward
(``chassis.backward_split``). Training memory is the checkpoints
(``L / 256`` states) plus gradients of the inputs' sizes: no partial sums
per warp.
"""

import functools
import math

import mlx.core as mx

from ..fallback.scalar_chunked import uses_tiles
from . import spans
from .chassis import (
    CROSSOVER_SEG,
    SPAN,
    KernelPath,
    Source,
    backward_split,
    checkpointed,
    chunk_carries,
    chunk_ends,
    chunk_prologue,
    common_unsupported,
    in_one_dtype,
    lane_split,
    lanes,
    large_state_crossover,
    launch,
    segments,
    selective_adjoint,
    selective_sums,
    selective_tile,
    span_backward,
    tile_steps,
    tiled_adjoint,
    tiled_forward,
)


def _prologue(group_inputs: str) -> str:
    """Shapes, the thread's chunk, and its lane of a state row; ``G`` is read
    from ``group_inputs`` (``Bm`` or ``Cm``)."""
    return f"""
    const int B = dt_shape[0];
    const int L = dt_shape[1];
    const int H = dt_shape[2];
    const int G = {group_inputs}_shape[2];
    const int NL = N / NSPLIT;  // state values per lane: n = i * NSPLIT + j
    const int PP = (P * NSPLIT + 31) / 32 * 32 / NSPLIT;  // a head's lanes fill whole warps
""" + chunk_prologue("B * H * PP * NSPLIT") + """
    const int j = tid % NSPLIT;
    const int p = (tid / NSPLIT) % PP;
    const int bh = tid / (NSPLIT * PP);
    const int b = bh / H;
    const int hh = bh % H;
    const int grp = hh / (H / G);
    const bool active = p < P;
"""


def _adjoint_tile(arrays: str, with_x: bool) -> dict:
    """Tile declarations and loads of the backward passes: ``dt``, ``dy``,
    ``x`` if ``with_x``, and the lane's values of ``B`` and ``C`` (those
    named in ``arrays``), as ``tile`` and ``load`` body texts."""
    declare, load = selective_tile("e", arrays)
    x_declare, x_load = ("""
                float xs[TILE];""", """
                    xs[e] = active ? static_cast<float>(x[row * P + p]) : 0.0f;""") \
        if with_x else ("", "")
    return dict(tile="""
                float dts[TILE];
                float gs[TILE];  // dy""" + x_declare + declare, load="""
                    const int row = (b * L + t) * H + hh;
                    const int r = ((b * L + t) * G + grp) * N + j;
                    dts[e] = static_cast<float>(dt[row]);
                    gs[e] = active ? static_cast<float>(dy[row * P + p]) : 0.0f;""" + x_load + load)


def _store_per_span(name: str, values: str) -> str:
    """Body text storing the lane's ``values`` as span ``chunk``'s entry of
    ``name [B, NS, H, P, N]``."""
    return f"""
    if (active) {{
        const int k = (((b * NS + chunk) * H + hh) * P + p) * N + j;
        for (int i = 0; i < NL; ++i) {name}[k + i * NSPLIT] = {values}[i];
    }}
"""


def _forward_tile(arrays: str) -> dict:
    """Tile declarations and loads of the forward passes: ``dt``, ``x`` and
    the lane's values of ``B`` and ``C`` (those named in ``arrays``), as
    ``tile`` and ``load`` body texts."""
    declare, load = selective_tile("s", arrays)
    return dict(tile="""
        float dts[TILE];
        float xs[TILE];""" + declare, load="""
            const int row = (b * L + t) * H + hh;
            const int r = ((b * L + t) * G + grp) * N + j;
            dts[s] = static_cast<float>(dt[row]);
            xs[s] = active ? static_cast<float>(x[row * P + p]) : 0.0f;""" + load)


_UPDATE = """
            const float dtv = dts[s];
            const float decay_head = EXP(dtv * A[hh * NA]);
            for (int i = 0; i < NL; ++i) {
                const float decay = (NA == 1) ? decay_head : EXP(dtv * A[hh * NA + i * NSPLIT + j]);
                h[i] = decay * h[i] + dtv * bs[s * NL + i] * xs[s];"""

FORWARD = Source(
    "ssd_fwd",
    inputs=("x", "dt", "A", "Bm", "Cm", "starts", "plan"),
    outputs=("y", "ckpt"),
    body=_prologue("Bm") + tiled_forward(
        "h", "i", "NL",
        init="""
        const int n = i * NSPLIT + j;
        h[i] = active ? starts[(((b * NC + chunk) * H + hh) * P + p) * N + n] : 0.0f;
        if (active && chunk == 0) ckpt[(((b * (NS + 1)) * H + hh) * P + p) * N + n] = h[i];""",
        **_forward_tile("BC"),
        step="""
            float out = 0.0f;""" + _UPDATE + """
                out += cs[s * NL + i] * h[i];
            }
            out = LANE_SUM(out, 1, NSPLIT / 2);
            if (active && j == 0) y[((b * L + t) * H + hh) * P + p] = static_cast<T>(out);""",
        checkpoint="""
                const int k = (((b * (NS + 1) + (t + SPAN) / SPAN) * H + hh) * P + p) * N + j;
                for (int i = 0; i < NL; ++i) ckpt[k + i * NSPLIT] = h[i];""",
    ),
)

# The state each span ends in from zero (spans side by side, kernels/spans.py).
ENDS = Source(
    "ssd_ends",
    inputs=("x", "dt", "A", "Bm", "plan"),
    outputs=("ends",),
    body=_prologue("Bm") + chunk_ends(
        "h", "i", "NL", **_forward_tile("B"),
        update=_UPDATE + """
            }""",
        store=_store_per_span("ends", "h")),
)

# The adjoint each span leaves from zero at its end (spans side by side).
CARRIES = Source(
    "ssd_carries",
    inputs=("dt", "A", "Cm", "dy", "plan"),
    outputs=("carries",),
    body=_prologue("Cm") + chunk_carries(
        "NL",
        **_adjoint_tile("C", with_x=False),
        step="""
                    const float decay_head = EXP(dts[e] * A[hh * NA]);
                    for (int i = 0; i < NL; ++i) {
                        const float decay = (NA == 1) ? decay_head
                                                      : EXP(dts[e] * A[hh * NA + i * NSPLIT + j]);
                        carry[i] = decay * (carry[i] + cs[e * NL + i] * gs[e]);
                    }""",
        store=_store_per_span("carries", "carry")),
)


def _recompute_step(save: str) -> str:
    """Step ``t`` of the lane's part of the state row, ``h``, again in the
    backward; ``save`` runs on ``h[i]`` before its update."""
    return """
            const int row = (b * L + t) * H + hh;
            const int r = ((b * L + t) * G + grp) * N + j;
            const float dtv = static_cast<float>(dt[row]);
            const float xv = active ? static_cast<float>(x[row * P + p]) : 0.0f;
            const float decay_head = EXP(dtv * A[hh * NA]);
            for (int i = 0; i < NL; ++i) {
                const float decay = (NA == 1) ? decay_head : EXP(dtv * A[hh * NA + i * NSPLIT + j]);
                SAVE
                h[i] = decay * h[i] + dtv * static_cast<float>(Bm[r + i * NSPLIT]) * xv;
            }""".replace("SAVE", save)


BACKWARD = Source(
    "ssd_bwd",
    inputs=("x", "dt", "A", "Bm", "Cm", "ckpt", "dy", "dend", "plan"),
    outputs=("dx", "ddt", "dA", "dB", "dC", "dh0"),
    body=_prologue("Bm") + """
    if (idle || bh >= B * H) return;  // whole warps only
    const int NDA = (NA == 1) ? 1 : NL;  // dA partials per lane
    float carry[NL];  // dLoss/dh[t] from steps after t
    float dA_acc[NDA];
    for (int i = 0; i < NL; ++i) {
        carry[i] = active ? dend[(((b * NC + chunk) * H + hh) * P + p) * N + i * NSPLIT + j]
                          : 0.0f;
    }
    for (int i = 0; i < NDA; ++i) dA_acc[i] = 0.0f;
""" + span_backward(
        "h", "i", "NL",
        load="""
        const int k = (((b * (NS + 1) + s) * H + hh) * P + p) * N + j;
        for (int i = 0; i < NL; ++i) h[i] = active ? ckpt[k + i * NSPLIT] : 0.0f;""",
        step=_recompute_step,
        adjoint=tiled_adjoint(
            **_adjoint_tile("BC", with_x=True),
            step="""
                    const int row = (b * L + t) * H + hh;
                    const int r = ((b * L + t) * G + grp) * N + j;
                    const float dtv = dts[e];
                    const float xv = xs[e];
                    const float g_out = gs[e];
                    const float decay_head = EXP(dtv * A[hh * NA]);
                    float dcs[NL];  // the lane's parts of the step's C and B gradients
                    float dbs[NL];
                    float dx_t = 0.0f;
                    float ddt_t = 0.0f;
                    for (int i = 0; i < NL; ++i) {
                        const float an = A[hh * NA + ((NA == 1) ? 0 : i * NSPLIT + j)];
                        const float decay = (NA == 1) ? decay_head : EXP(dtv * an);
                        const float prev = before[(t - t0) * NL + i];""" + selective_adjoint(
                            "dtv", "xv") + """
                        dx_t += gt * dtv * bn;
                        ddt_t += gt * (an * decay * prev + bn * xv);
                        dA_acc[(NA == 1) ? 0 : i] += gt * dtv * decay * prev;
                        carry[i] = decay * gt;
                    }""" + selective_sums("rows p") + """
                    dx_t = LANE_SUM(dx_t, 1, NSPLIT / 2);
                    const float ddt_sum = WARP_SUM(ddt_t);
                    if (LANE_ID == 0) ATOMIC_ADD(&ddt[row], ddt_sum);
                    if (active && j == 0) dx[row * P + p] = static_cast<T>(dx_t);""",
        ),
    ) + """    if (active && chunk == 0) {
        for (int i = 0; i < NL; ++i) dh0[(bh * P + p) * N + i * NSPLIT + j] = carry[i];
    }
    if (active) {
        for (int i = 0; i < NDA; ++i) {
            ATOMIC_ADD(&dA[(bh * P + p) * (NDA * NSPLIT) + i * NSPLIT + j], dA_acc[i]);
        }
    }
""",
)


def _seg(n: int, split: int) -> int:
    """Steps per recomputed piece: the piece's states (``SEG`` x the lane's
    ``N / NSPLIT`` values) stay in fast scratch. At 16 values a lane (N=128)
    pieces of 4 steps: H100, bf16, B=8 L=2048 H=32 P=64, forward+backward
    20.5-20.6 against 24.2 ms at 32 (docs/kernels.md "Shorter pieces")."""
    return 4 if n // split >= 16 else 32


def _template(x, A, B, dtype, split):
    n = B.shape[-1]
    seg = _seg(n, split)
    return {"T": dtype, "P": x.shape[-1], "N": n, "NA": A.shape[-1], "NSPLIT": split,
            "SEG": seg, "SUBS": SPAN // seg, "TILE": tile_steps(n)}


def _threads(batch, heads, width, split):
    return batch * heads * lanes(width * split)


def _per_head_rates(A):
    return (A if A.ndim == 2 else A[:, None]).astype(mx.float32)


def _span_decays(dt, rates, span):
    """Each span's decay product ``exp(A * sum dt)``: ``[B, NS, H, 1, NA]``."""
    sums = spans.per_span(dt, span, mx.sum, 0.0)
    decays = mx.exp(sums[..., None] * rates)
    return decays[..., None, :]


def _plan(x, B, state, backward=False):
    """The spans of the forward, or of the backward (``spans.plan``):
    ``(span, chunks, plan)``."""
    batch, length, heads, width = x.shape
    threads = _threads(batch, heads, width, lane_split(B.shape[-1]))
    span, chunks = spans.plan("ssd", threads, length, state.size, backward)
    return span, chunks, spans.plan_array(span, chunks)


def _forward(x, dt, A, B, C, state):
    batch, length, heads, width = x.shape
    n = B.shape[-1]
    dtype, (x, dt, B, C) = in_one_dtype(x, dt, B, C)
    rates = _per_head_rates(A)
    split = lane_split(n)
    rows = _threads(batch, heads, width, split)
    span, chunks, plan = _plan(x, B, state)
    template = _template(x, rates, B, dtype, split) | spans.baked(chunks)
    starts = state[:, None]
    if chunks > 1:
        (ends,) = launch(ENDS, (x, dt, rates, B, plan),
                         {"ends": ((batch, chunks, heads, width, n), mx.float32)},
                         threads=rows * chunks, template=template)
        starts = spans.entering_states(_span_decays(dt, rates, span), ends, state)
    ckpt_shape = (batch, segments(length, span) + 1, heads, width, n)
    return launch(
        FORWARD,
        (x, dt, rates, B, C, starts, plan),
        {"y": (x.shape, dtype), "ckpt": (ckpt_shape, mx.float32)},
        threads=rows * chunks,
        template=template,
    )


def _backward(dy, dfinal, ckpt, x, dt, A, B, C, state):
    batch, length, heads, width = x.shape
    n = B.shape[-1]
    dtype, (x_, dt_, B_, C_) = in_one_dtype(x, dt, B, C)
    rates = _per_head_rates(A)
    span, chunks, plan = _plan(x, B, state, backward=True)
    split = backward_split(n, functools.partial(_threads, batch, heads, width))
    rows = _threads(batch, heads, width, split)
    template = _template(x, rates, B, dtype, split) | spans.baked(chunks)
    f32 = mx.float32
    dend = dfinal[:, None]
    if chunks > 1:
        (carries,) = launch(CARRIES, (dt_, rates, C_, dy, plan),
                            {"carries": ((batch, chunks, heads, width, n), f32)},
                            threads=rows * chunks, template=template)
        dend = spans.leaving_carries(_span_decays(dt_, rates, span), carries, dfinal)
    per_lane = rates.shape[1] if rates.shape[1] > 1 else split  # dA partials
    dx, ddt, dA, dB, dC, dh0 = launch(
        BACKWARD,
        (x_, dt_, rates, B_, C_, ckpt, dy, dend, plan),
        {"dx": (x.shape, dtype), "ddt": (dt.shape, f32),
         "dA": ((batch, heads, width, per_lane), f32),
         "dB": (B.shape, f32), "dC": (C.shape, f32), "dh0": (state.shape, f32)},
        threads=rows * chunks,
        template=template,
        init_value=0.0,
    )
    dA = dA.sum((0, 2))  # [H, N], or [H, NSPLIT] partials of a per-head rate
    return dx, ddt, (dA if rates.shape[1] > 1 else dA.sum(-1)).reshape(A.shape), dB, dC, dh0


def _unsupported(bound, arrays, backend):
    dims = bound.dims
    if dims["N"] > 128:
        return f"N={dims['N']} > 128 does not fit the kernel's registers"
    ckpt = math.prod(bound.batch) * (dims["L"] // SPAN + 2) * dims["H"] * dims["P"]
    return common_unsupported(arrays, ckpt * dims["N"])


def _slower(bound, arrays):
    dims = bound.dims
    tiled = bound.variant["A"] == 0 and uses_tiles(dims["L"], dims["N"], dims["P"], arrays)
    return large_state_crossover(dims, "P", "N", CROSSOVER_SEG,
                                 math.prod(bound.batch) * dims["H"], tiled)


KERNEL = KernelPath(
    run=checkpointed(_forward, _backward), unsupported=_unsupported, slower=_slower
)

"""Fused kernels for ``"gla"``, gated linear attention.

The state of a head is ``S [K, V]``. Each column ``S[:, j]`` is split over
``KSPLIT`` consecutive lanes: lane ``u`` holds ``S[i, j]`` for
``i = c * KSPLIT + u`` (``KL = K / KSPLIT`` values, in registers). Sums over
``i`` (the output ``y[j]``, ``dv[j]``) are ``LANE_SUM``s over those lanes;
sums over ``j`` (the gradients of ``q``, ``k`` and the gates) are
reduce-scattered over the other lane bits (``chassis.scatter_sums``; a
``WARP_SUM`` for one gate per head) and added atomically into their outputs.
``GK`` is ``K`` for per-key-channel gates and 1 for one gate per head.
Checkpoints every ``SPAN`` steps, recomputed in ``SEG``-step pieces, and
spans side by side at small launches, as in the ``"ssd"`` kernel
(``kernels/ssd.py``); the backward may split a column
over more lanes than the forward (``chassis.backward_split``).
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
    scatter_sums,
    segments,
    span_backward,
    tile_steps,
    tiled_adjoint,
    tiled_forward,
)


def _prologue(keys: str) -> str:
    """Shapes (from ``keys``, ``q`` or ``k``), the thread's chunk, and its
    lane of a state column."""
    return f"""
    const int B = {keys}_shape[0];
    const int L = {keys}_shape[1];
    const int H = {keys}_shape[2];
    const int KL = K / KSPLIT;  // state values per lane: i = c * KSPLIT + u
    const int VP = (V * KSPLIT + 31) / 32 * 32 / KSPLIT;  // a head's lanes fill whole warps
""" + chunk_prologue("B * H * VP * KSPLIT") + """
    const int u = tid % KSPLIT;
    const int j = (tid / KSPLIT) % VP;
    const int bh = tid / (KSPLIT * VP);
    const int b = bh / H;
    const int hh = bh % H;
    const bool active = j < V;
"""


def _step(save: str) -> str:
    """Step ``t`` of the lane's part of the state column, ``S``; ``save`` runs
    on ``S[c]`` before its update."""
    return """
                const int row = (b * L + t) * H + hh;
                const float vj = active ? static_cast<float>(v[row * V + j]) : 0.0f;
                for (int c = 0; c < KL; ++c) {
                    const int i = c * KSPLIT + u;
                    const float gi = static_cast<float>(g[row * GK + ((GK == 1) ? 0 : i)]);
                    SAVE
                    S[c] = gi * S[c] + static_cast<float>(k[row * K + i]) * vj;
                }""".replace("SAVE", save)


def _gates_keys_queries(entry: str, arrays: str = "gkq") -> tuple[str, str]:
    """Body text declaring, and loading into tile entry ``entry``, the lane's
    ``KL`` gates, keys and queries (``gs``, ``ks``, ``qs``; those named in
    ``arrays``) of the step at row ``row``."""
    reads = {"g": "g[row * GK + ((GK == 1) ? 0 : i)]", "k": "k[row * K + i]",
             "q": "q[row * K + i]"}
    declare = "".join(f"""
                float {a}s[TILE * KL];""" for a in arrays)
    load = "".join(f"""
                    {a}s[{entry} * KL + c] = static_cast<float>({reads[a]});""" for a in arrays)
    return declare, f"""
                for (int c = 0; c < KL; ++c) {{
                    const int i = c * KSPLIT + u;{load}
                }}"""


_GKQ_BWD = _gates_keys_queries("e")


def _forward_tile(arrays: str) -> dict:
    """Tile declarations and loads of the forward passes: ``v`` and the
    lane's gates, keys and queries (those named in ``arrays``), as ``tile``
    and ``load`` body texts."""
    declare, load = _gates_keys_queries("s", arrays)
    return dict(tile="""
        float vs[TILE];""" + declare, load="""
            const int row = (b * L + t) * H + hh;
            vs[s] = active ? static_cast<float>(v[row * V + j]) : 0.0f;""" + load)


def _store_per_span(name: str, values: str) -> str:
    """Body text storing the lane's ``values`` as span ``chunk``'s entry of
    ``name [B, NS, H, K, V]``."""
    return f"""
    if (active) {{
        const int base = ((b * NS + chunk) * H + hh) * K;
        for (int c = 0; c < KL; ++c) {name}[(base + c * KSPLIT + u) * V + j] = {values}[c];
    }}
"""


_UPDATE = """
            for (int c = 0; c < KL; ++c) {
                S[c] = gs[s * KL + c] * S[c] + ks[s * KL + c] * vs[s];"""

FORWARD = Source(
    "gla_fwd",
    inputs=("q", "k", "v", "g", "starts", "plan"),
    outputs=("y", "ckpt"),
    body=_prologue("q") + tiled_forward(
        "S", "c", "KL",
        init="""
        const int i = c * KSPLIT + u;
        S[c] = active ? starts[(((b * NC + chunk) * H + hh) * K + i) * V + j] : 0.0f;
        if (active && chunk == 0) ckpt[(((b * (NS + 1)) * H + hh) * K + i) * V + j] = S[c];""",
        **_forward_tile("gkq"),
        step="""
            float out = 0.0f;""" + _UPDATE + """
                out += qs[s * KL + c] * S[c];
            }
            out = LANE_SUM(out, 1, KSPLIT / 2);
            if (active && u == 0) y[((b * L + t) * H + hh) * V + j] = static_cast<T>(out);""",
        checkpoint="""
                const int base = ((b * (NS + 1) + (t + SPAN) / SPAN) * H + hh) * K;
                for (int c = 0; c < KL; ++c) ckpt[(base + c * KSPLIT + u) * V + j] = S[c];""",
    ),
)

# The state each span ends in from zero (spans side by side, kernels/spans.py).
ENDS = Source(
    "gla_ends",
    inputs=("k", "v", "g", "plan"),
    outputs=("ends",),
    body=_prologue("k") + chunk_ends(
        "S", "c", "KL", **_forward_tile("gk"),
        update=_UPDATE + """
            }""",
        store=_store_per_span("ends", "S")),
)

# The adjoint each span leaves from zero at its end (spans side by side).
CARRIES = Source(
    "gla_carries",
    inputs=("q", "g", "dy", "plan"),
    outputs=("carries",),
    body=_prologue("q") + chunk_carries(
        "KL",
        tile="""
                float gos[TILE];  // dy""" + _gates_keys_queries("e", "gq")[0],
        load="""
                    const int row = (b * L + t) * H + hh;
                    gos[e] = active ? static_cast<float>(dy[row * V + j]) : 0.0f;"""
             + _gates_keys_queries("e", "gq")[1],
        step="""
                    for (int c = 0; c < KL; ++c) {
                        carry[c] = gs[e * KL + c] * (carry[c] + qs[e * KL + c] * gos[e]);
                    }""",
        store=_store_per_span("carries", "carry")),
)

BACKWARD = Source(
    "gla_bwd",
    inputs=("q", "k", "v", "g", "ckpt", "dy", "dend", "plan"),
    outputs=("dq", "dk", "dv", "dg", "dh0"),
    body=_prologue("q") + """
    if (idle || bh >= B * H) return;  // whole warps only
    float carry[KL];  // dLoss/dS[t][i, j] from steps after t
    for (int c = 0; c < KL; ++c) {
        carry[c] = active ? dend[(((b * NC + chunk) * H + hh) * K + c * KSPLIT + u) * V + j]
                          : 0.0f;
    }
""" + span_backward(
        "S", "c", "KL",
        load="""
        const int base = ((b * (NS + 1) + s) * H + hh) * K;
        for (int c = 0; c < KL; ++c) {
            S[c] = active ? ckpt[(base + c * KSPLIT + u) * V + j] : 0.0f;
        }""",
        step=_step,
        adjoint=tiled_adjoint(
            tile="""
                float vs[TILE];
                float gos[TILE];  // dy""" + _GKQ_BWD[0],
            load="""
                    const int row = (b * L + t) * H + hh;
                    vs[e] = active ? static_cast<float>(v[row * V + j]) : 0.0f;
                    gos[e] = active ? static_cast<float>(dy[row * V + j]) : 0.0f;""" + _GKQ_BWD[1],
            step="""
                    const int row = (b * L + t) * H + hh;
                    const float vj = vs[e];
                    const float g_out = gos[e];
                    float dv_t = 0.0f;
                    float dg_head = 0.0f;
                    float dqs[KL];  // the lane's parts of the step's q, k and gate gradients
                    float dks[KL];
                    float dgs[KL];
                    for (int c = 0; c < KL; ++c) {
                        const float gi = gs[e * KL + c];
                        const float ki = ks[e * KL + c];
                        const float qi = qs[e * KL + c];
                        const float prev = before[(t - t0) * KL + c];
                        const float st = gi * prev + ki * vj;
                        const float gt = carry[c] + qi * g_out;
                        dqs[c] = st * g_out;
                        dks[c] = gt * vj;
                        dgs[c] = gt * prev;
                        dg_head += gt * prev;
                        dv_t += gt * ki;
                        carry[c] = gi * gt;
                    }""" + scatter_sums("columns j", "KL", "KSPLIT", (
                        ("dqs", "dq[row * K + {i} * KSPLIT + u]"),
                        ("dks", "dk[row * K + {i} * KSPLIT + u]"))) + """
                    if (GK != 1) {""" + scatter_sums("columns j", "KL", "KSPLIT", (
                        ("dgs", "dg[row * GK + {i} * KSPLIT + u]"),)) + """
                    }
                    if (GK == 1) {
                        const float dg_sum = WARP_SUM(dg_head);
                        if (LANE_ID == 0) ATOMIC_ADD(&dg[row], dg_sum);
                    }
                    dv_t = LANE_SUM(dv_t, 1, KSPLIT / 2);
                    if (active && u == 0) dv[row * V + j] = static_cast<T>(dv_t);""",
        ),
    ) + """    if (active && chunk == 0) {
        for (int c = 0; c < KL; ++c) dh0[(bh * K + c * KSPLIT + u) * V + j] = carry[c];
    }
""",
)


def _seg(k: int, split: int) -> int:
    """Steps per recomputed piece: the piece's states (``SEG`` x the lane's
    ``K / KSPLIT`` values) stay in fast scratch. At 16 values a lane (K=128)
    pieces of 4 steps: H100, bf16, B=8 T=2048 H=16 V=128, forward+backward
    19.4-19.5 against 22.1 ms at 32 (docs/kernels.md "Shorter pieces")."""
    return 4 if k // split >= 16 else 32


def _prepare(q, k, v, g):
    gates = g[..., None] if g.ndim == 3 else g  # per-head gates as [B, L, H, 1]
    dtype, (q, k, v, gates) = in_one_dtype(q, k, v, gates)
    return dtype, (q, k, v, gates)


def _template(dtype, q, v, gates, split):
    seg = _seg(q.shape[-1], split)
    return {"T": dtype, "K": q.shape[-1], "V": v.shape[-1], "GK": gates.shape[-1],
            "KSPLIT": split, "SEG": seg, "SUBS": SPAN // seg,
            "TILE": tile_steps(q.shape[-1])}


def _threads(q, v, split):
    batch, _, heads, _ = q.shape
    return batch * heads * lanes(v.shape[-1] * split)


def _span_decays(gates, span):
    """Each span's product of the gates: ``[B, NS, H, GK, 1]``."""
    return spans.per_span(gates, span, mx.prod, 1.0)[..., None]


def _plan(q, v, state, backward=False):
    """The spans of the forward, or of the backward (``spans.plan``):
    ``(span, chunks, plan)``."""
    threads = _threads(q, v, lane_split(q.shape[-1]))
    span, chunks = spans.plan("gla", threads, q.shape[1], state.size, backward)
    return span, chunks, spans.plan_array(span, chunks)


def _forward(q, k, v, g, state):
    batch, length, heads, dk = q.shape
    dtype, (q, k, v, gates) = _prepare(q, k, v, g)
    split = lane_split(dk)
    rows = _threads(q, v, split)
    span, chunks, plan = _plan(q, v, state)
    template = _template(dtype, q, v, gates, split) | spans.baked(chunks)
    starts = state[:, None]
    if chunks > 1:
        (ends,) = launch(ENDS, (k, v, gates, plan),
                         {"ends": ((batch, chunks, *state.shape[1:]), mx.float32)},
                         threads=rows * chunks, template=template)
        starts = spans.entering_states(_span_decays(gates, span), ends, state)
    ckpt_shape = (batch, segments(length, span) + 1, heads, dk, v.shape[-1])
    return launch(
        FORWARD,
        (q, k, v, gates, starts, plan),
        {"y": (v.shape, dtype), "ckpt": (ckpt_shape, mx.float32)},
        threads=rows * chunks,
        template=template,
    )


def _backward(dy, dfinal, ckpt, q, k, v, g, state):
    batch, length, heads, dk = q.shape
    dtype, (q_, k_, v_, gates) = _prepare(q, k, v, g)
    f32 = mx.float32
    span, chunks, plan = _plan(q, v, state, backward=True)
    split = backward_split(dk, functools.partial(_threads, q, v))
    rows = _threads(q, v, split)
    template = _template(dtype, q_, v_, gates, split) | spans.baked(chunks)
    dend = dfinal[:, None]
    if chunks > 1:
        (carries,) = launch(CARRIES, (q_, gates, dy, plan),
                            {"carries": ((batch, chunks, *state.shape[1:]), f32)},
                            threads=rows * chunks, template=template)
        dend = spans.leaving_carries(_span_decays(gates, span), carries, dfinal)
    dq, dk_, dv, dg, dh0 = launch(
        BACKWARD,
        (q_, k_, v_, gates, ckpt, dy, dend, plan),
        {"dq": (q.shape, f32), "dk": (k.shape, f32), "dv": (v.shape, dtype),
         "dg": (gates.shape, f32), "dh0": (state.shape, f32)},
        threads=rows * chunks,
        template=template,
        init_value=0.0,
    )
    return dq, dk_, dv, dg.reshape(g.shape), dh0


def _unsupported(bound, arrays, backend):
    dims = bound.dims
    if dims["K"] > 128:
        return f"K={dims['K']} > 128 does not fit the kernel's registers"
    ckpt = math.prod(bound.batch) * (dims["L"] // SPAN + 2) * dims["H"]
    return common_unsupported(arrays, ckpt * dims["K"] * dims["V"])


def _slower(bound, arrays):
    dims = bound.dims
    tiled = bound.variant["g"] == 0 and uses_tiles(dims["L"], dims["K"], dims["V"], arrays)
    return large_state_crossover(dims, "K", "V", CROSSOVER_SEG,
                                 math.prod(bound.batch) * dims["H"], tiled)


KERNEL = KernelPath(
    run=checkpointed(_forward, _backward), unsupported=_unsupported, slower=_slower
)

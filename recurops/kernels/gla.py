"""Fused kernels for ``"gla"``, gated linear attention.

One thread per (batch, head, j) holds the state column ``S[:, j]`` (``K``
values) in registers; lanes of a warp are consecutive ``j``, so the
gradients of ``q``, ``k`` and the gates (sums over ``j``) are warp sums added
atomically into their outputs. ``GK`` is ``K`` for per-key-channel gates and
1 for one gate per head. Checkpoints every ``SPAN`` steps, recomputed in
``SEG``-step pieces, as in the ``"ssd"`` kernel (``kernels/ssd.py``).
"""

import math

import mlx.core as mx

from .chassis import (
    SPAN,
    KernelPath,
    Source,
    checkpointed,
    common_unsupported,
    in_one_dtype,
    lanes,
    large_state_crossover,
    launch,
    segments,
)

_PROLOGUE = """
    const int B = q_shape[0];
    const int L = q_shape[1];
    const int H = q_shape[2];
    const int VP = (V + 31) / 32 * 32;
    const int SPAN = SEG * SUBS;
    const int NS = (L + SPAN - 1) / SPAN;
    const int tid = THREAD_ID;
    const int j = tid % VP;
    const int bh = tid / VP;
    const int b = bh / H;
    const int hh = bh % H;
    const bool active = j < V;
"""

FORWARD = Source(
    "gla_fwd",
    inputs=("q", "k", "v", "g", "h0"),
    outputs=("y", "ckpt"),
    body=_PROLOGUE + """
    if (bh >= B * H || !active) return;
    float S[K];
    for (int i = 0; i < K; ++i) {
        S[i] = h0[(bh * K + i) * V + j];
        ckpt[(((b * (NS + 1)) * H + hh) * K + i) * V + j] = S[i];
    }
    for (int t = 0; t < L; ++t) {
        const int row = (b * L + t) * H + hh;
        const float vj = static_cast<float>(v[row * V + j]);
        float out = 0.0f;
        for (int i = 0; i < K; ++i) {
            const float gi = static_cast<float>(g[row * GK + ((GK == 1) ? 0 : i)]);
            S[i] = gi * S[i] + static_cast<float>(k[row * K + i]) * vj;
            out += static_cast<float>(q[row * K + i]) * S[i];
        }
        y[row * V + j] = static_cast<T>(out);
        if ((t + 1) % SPAN == 0 || t == L - 1) {
            const int c = ((b * (NS + 1) + (t + SPAN) / SPAN) * H + hh) * K;
            for (int i = 0; i < K; ++i) ckpt[(c + i) * V + j] = S[i];
        }
    }
""",
)

BACKWARD = Source(
    "gla_bwd",
    inputs=("q", "k", "v", "g", "ckpt", "dy", "dfinal"),
    outputs=("dq", "dk", "dv", "dg", "dh0"),
    body=_PROLOGUE + """
    if (bh >= B * H) return;  // whole warps only: VP is a multiple of 32
    float carry[K];  // dLoss/dS[t][:, j] from steps after t
    for (int i = 0; i < K; ++i) carry[i] = active ? dfinal[(bh * K + i) * V + j] : 0.0f;
    float starts[SUBS * K];  // S entering each SEG-step piece of the span
    float before[SEG * K];  // S[t-1][:, j] for each step t of the piece
    for (int s = NS - 1; s >= 0; --s) {
        float S[K];
        for (int i = 0; i < K; ++i) {
            S[i] = active ? ckpt[(((b * (NS + 1) + s) * H + hh) * K + i) * V + j] : 0.0f;
        }
        for (int t = s * SPAN; t < s * SPAN + SPAN; ++t) {
            if ((t - s * SPAN) % SEG == 0) {
                for (int i = 0; i < K; ++i) starts[((t - s * SPAN) / SEG) * K + i] = S[i];
            }
            if (t >= L) continue;
            const int row = (b * L + t) * H + hh;
            const float vj = active ? static_cast<float>(v[row * V + j]) : 0.0f;
            for (int i = 0; i < K; ++i) {
                const float gi = static_cast<float>(g[row * GK + ((GK == 1) ? 0 : i)]);
                S[i] = gi * S[i] + static_cast<float>(k[row * K + i]) * vj;
            }
        }
        for (int piece = SUBS - 1; piece >= 0; --piece) {
            const int t0 = s * SPAN + piece * SEG;
            const int t1 = (t0 + SEG < L) ? t0 + SEG : L;
            for (int i = 0; i < K; ++i) S[i] = starts[piece * K + i];
            for (int t = t0; t < t1; ++t) {
                const int row = (b * L + t) * H + hh;
                const float vj = active ? static_cast<float>(v[row * V + j]) : 0.0f;
                for (int i = 0; i < K; ++i) {
                    const float gi = static_cast<float>(g[row * GK + ((GK == 1) ? 0 : i)]);
                    before[(t - t0) * K + i] = S[i];
                    S[i] = gi * S[i] + static_cast<float>(k[row * K + i]) * vj;
                }
            }
            for (int t = t1 - 1; t >= t0; --t) {
                const int row = (b * L + t) * H + hh;
                const float vj = active ? static_cast<float>(v[row * V + j]) : 0.0f;
                const float g_out = active ? static_cast<float>(dy[row * V + j]) : 0.0f;
                float dv_t = 0.0f;
                float dg_head = 0.0f;
                for (int i = 0; i < K; ++i) {
                    const float gi = static_cast<float>(g[row * GK + ((GK == 1) ? 0 : i)]);
                    const float ki = static_cast<float>(k[row * K + i]);
                    const float qi = static_cast<float>(q[row * K + i]);
                    const float prev = before[(t - t0) * K + i];
                    const float st = gi * prev + ki * vj;
                    const float gt = carry[i] + qi * g_out;
                    const float dq_i = WARP_SUM(st * g_out);
                    const float dk_i = WARP_SUM(gt * vj);
                    if (GK == 1) {
                        dg_head += gt * prev;
                    } else {
                        const float dg_i = WARP_SUM(gt * prev);
                        if (LANE_ID == i % 32) ATOMIC_ADD(&dg[row * GK + i], dg_i);
                    }
                    if (LANE_ID == i % 32) {
                        ATOMIC_ADD(&dq[row * K + i], dq_i);
                        ATOMIC_ADD(&dk[row * K + i], dk_i);
                    }
                    dv_t += gt * ki;
                    carry[i] = gi * gt;
                }
                if (GK == 1) {
                    const float dg_sum = WARP_SUM(dg_head);
                    if (LANE_ID == 0) ATOMIC_ADD(&dg[row], dg_sum);
                }
                if (active) dv[row * V + j] = static_cast<T>(dv_t);
            }
        }
    }
    if (active) {
        for (int i = 0; i < K; ++i) dh0[(bh * K + i) * V + j] = carry[i];
    }
""",
)


def _seg(k: int) -> int:
    return 32 if k <= 64 else 16


def _prepare(q, k, v, g):
    gates = g[..., None] if g.ndim == 3 else g  # per-head gates as [B, L, H, 1]
    dtype, (q, k, v, gates) = in_one_dtype(q, k, v, gates)
    return dtype, (q, k, v, gates)


def _template(dtype, q, v, gates):
    seg = _seg(q.shape[-1])
    return {"T": dtype, "K": q.shape[-1], "V": v.shape[-1], "GK": gates.shape[-1],
            "SEG": seg, "SUBS": SPAN // seg}


def _forward(q, k, v, g, state):
    batch, length, heads, dk = q.shape
    dtype, (q, k, v, gates) = _prepare(q, k, v, g)
    ckpt_shape = (batch, segments(length, SPAN) + 1, heads, dk, v.shape[-1])
    return launch(
        FORWARD,
        (q, k, v, gates, state),
        {"y": (v.shape, dtype), "ckpt": (ckpt_shape, mx.float32)},
        threads=batch * heads * lanes(v.shape[-1]),
        template=_template(dtype, q, v, gates),
    )


def _backward(dy, dfinal, ckpt, q, k, v, g, state):
    batch, length, heads, dk = q.shape
    dtype, (q_, k_, v_, gates) = _prepare(q, k, v, g)
    f32 = mx.float32
    dq, dk_, dv, dg, dh0 = launch(
        BACKWARD,
        (q_, k_, v_, gates, ckpt, dy, dfinal),
        {"dq": (q.shape, f32), "dk": (k.shape, f32), "dv": (v.shape, dtype),
         "dg": (gates.shape, f32), "dh0": (state.shape, f32)},
        threads=batch * heads * lanes(v.shape[-1]),
        template=_template(dtype, q_, v_, gates),
        init_value=0.0,
    )
    return dq, dk_, dv, dg.reshape(g.shape), dh0


def _unsupported(bound, arrays, backend):
    dims = bound.dims
    if dims["K"] > 128:
        return f"K={dims['K']} > 128 does not fit the kernel's registers"
    ckpt = math.prod(bound.batch) * (dims["L"] // SPAN + 2) * dims["H"]
    return common_unsupported(arrays, ckpt * dims["K"] * dims["V"])


def _slower(bound):
    return large_state_crossover(bound.dims, "K", "V", _seg(bound.dims["K"]))


KERNEL = KernelPath(
    run=checkpointed(_forward, _backward), unsupported=_unsupported, slower=_slower
)

"""Fused kernels for ``"ssd"``, the Mamba-2 scan.

One thread per (batch, head, p) holds the state row ``h[p, :]`` (``N``
values) in registers; lanes of a warp are consecutive ``p``, so the gradients
of ``B``, ``C`` and ``dt`` (sums over ``p``, and over the heads of a group)
are warp sums added atomically into their outputs.

The forward stores the state every ``SPAN = SEG * SUBS`` steps (128). The
backward recomputes a span once from its checkpoint, keeping the state at
the start of each ``SEG``-step piece in scratch; then, piece by piece from
the newest, recomputes the piece's states and runs the adjoint sweep.
Training memory is the checkpoints (``L / 128`` states) plus gradients of
the inputs' sizes: no partial sums per warp.
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
    const int B = x_shape[0];
    const int L = x_shape[1];
    const int H = x_shape[2];
    const int G = Bm_shape[2];
    const int PP = (P + 31) / 32 * 32;
    const int SPAN = SEG * SUBS;
    const int NS = (L + SPAN - 1) / SPAN;
    const int tid = THREAD_ID;
    const int p = tid % PP;
    const int bh = tid / PP;
    const int b = bh / H;
    const int hh = bh % H;
    const int grp = hh / (H / G);
    const bool active = p < P;
"""

FORWARD = Source(
    "ssd_fwd",
    inputs=("x", "dt", "A", "Bm", "Cm", "h0"),
    outputs=("y", "ckpt"),
    body=_PROLOGUE + """
    if (bh >= B * H || !active) return;
    float h[N];
    for (int n = 0; n < N; ++n) {
        h[n] = h0[(bh * P + p) * N + n];
        ckpt[(((b * (NS + 1)) * H + hh) * P + p) * N + n] = h[n];
    }
    for (int t = 0; t < L; ++t) {
        const int row = (b * L + t) * H + hh;
        const int r = ((b * L + t) * G + grp) * N;
        const float dtv = static_cast<float>(dt[row]);
        const float xv = static_cast<float>(x[row * P + p]);
        const float decay_head = EXP(dtv * A[hh * NA]);
        float out = 0.0f;
        for (int n = 0; n < N; ++n) {
            const float decay = (NA == 1) ? decay_head : EXP(dtv * A[hh * NA + n]);
            h[n] = decay * h[n] + dtv * static_cast<float>(Bm[r + n]) * xv;
            out += static_cast<float>(Cm[r + n]) * h[n];
        }
        y[row * P + p] = static_cast<T>(out);
        if ((t + 1) % SPAN == 0 || t == L - 1) {
            const int k = (((b * (NS + 1) + (t + SPAN) / SPAN) * H + hh) * P + p) * N;
            for (int n = 0; n < N; ++n) ckpt[k + n] = h[n];
        }
    }
""",
)


def _recompute_step(save: str) -> str:
    """Step ``t`` of the state row ``h`` again in the backward; ``save`` runs
    on ``h[n]`` before its update."""
    return """
            const int row = (b * L + t) * H + hh;
            const int r = ((b * L + t) * G + grp) * N;
            const float dtv = static_cast<float>(dt[row]);
            const float xv = active ? static_cast<float>(x[row * P + p]) : 0.0f;
            const float decay_head = EXP(dtv * A[hh * NA]);
            for (int n = 0; n < N; ++n) {
                const float decay = (NA == 1) ? decay_head : EXP(dtv * A[hh * NA + n]);
                SAVE
                h[n] = decay * h[n] + dtv * static_cast<float>(Bm[r + n]) * xv;
            }""".replace("SAVE", save)


BACKWARD = Source(
    "ssd_bwd",
    inputs=("x", "dt", "A", "Bm", "Cm", "ckpt", "dy", "dfinal"),
    outputs=("dx", "ddt", "dA", "dB", "dC", "dh0"),
    body=_PROLOGUE + """
    if (bh >= B * H) return;  // whole warps only: PP is a multiple of 32
    float carry[N];  // dLoss/dh[t] from steps after t
    float dA_acc[NA];
    for (int n = 0; n < N; ++n) carry[n] = active ? dfinal[(bh * P + p) * N + n] : 0.0f;
    for (int n = 0; n < NA; ++n) dA_acc[n] = 0.0f;
    float starts[SUBS * N];  // the state entering each SEG-step piece of the span
    float before[SEG * N];  // h[t-1] for each step t of the piece
    for (int s = NS - 1; s >= 0; --s) {
        float h[N];
        for (int n = 0; n < N; ++n) {
            h[n] = active ? ckpt[(((b * (NS + 1) + s) * H + hh) * P + p) * N + n] : 0.0f;
        }
        for (int t = s * SPAN; t < s * SPAN + SPAN; ++t) {
            if ((t - s * SPAN) % SEG == 0) {
                for (int n = 0; n < N; ++n) starts[((t - s * SPAN) / SEG) * N + n] = h[n];
            }
            if (t >= L) continue;
""" + _recompute_step("") + """
        }
        for (int piece = SUBS - 1; piece >= 0; --piece) {
            const int t0 = s * SPAN + piece * SEG;
            const int t1 = (t0 + SEG < L) ? t0 + SEG : L;
            for (int n = 0; n < N; ++n) h[n] = starts[piece * N + n];
            for (int t = t0; t < t1; ++t) {
""" + _recompute_step("before[(t - t0) * N + n] = h[n];") + """
            }
            for (int t = t1 - 1; t >= t0; --t) {
                const int row = (b * L + t) * H + hh;
                const int r = ((b * L + t) * G + grp) * N;
                const float dtv = static_cast<float>(dt[row]);
                const float xv = active ? static_cast<float>(x[row * P + p]) : 0.0f;
                const float g_out = active ? static_cast<float>(dy[row * P + p]) : 0.0f;
                const float decay_head = EXP(dtv * A[hh * NA]);
                float dx_t = 0.0f;
                float ddt_t = 0.0f;
                for (int n = 0; n < N; ++n) {
                    const float an = A[hh * NA + ((NA == 1) ? 0 : n)];
                    const float decay = (NA == 1) ? decay_head : EXP(dtv * an);
                    const float prev = before[(t - t0) * N + n];
                    const float bn = static_cast<float>(Bm[r + n]);
                    const float cn = static_cast<float>(Cm[r + n]);
                    const float ht = decay * prev + dtv * bn * xv;
                    const float gt = carry[n] + cn * g_out;
                    const float dC_n = WARP_SUM(ht * g_out);
                    const float dB_n = WARP_SUM(gt * dtv * xv);
                    if (LANE_ID == n % 32) {
                        ATOMIC_ADD(&dC[r + n], dC_n);
                        ATOMIC_ADD(&dB[r + n], dB_n);
                    }
                    dx_t += gt * dtv * bn;
                    ddt_t += gt * (an * decay * prev + bn * xv);
                    dA_acc[(NA == 1) ? 0 : n] += gt * dtv * decay * prev;
                    carry[n] = decay * gt;
                }
                const float ddt_sum = WARP_SUM(ddt_t);
                if (LANE_ID == 0) ATOMIC_ADD(&ddt[row], ddt_sum);
                if (active) dx[row * P + p] = static_cast<T>(dx_t);
            }
        }
    }
    if (active) {
        for (int n = 0; n < N; ++n) dh0[(bh * P + p) * N + n] = carry[n];
        for (int n = 0; n < NA; ++n) dA[(bh * P + p) * NA + n] = dA_acc[n];
    }
""",
)


def _seg(n: int) -> int:
    return 32 if n <= 32 else 16


def _template(x, A, B, dtype):
    seg = _seg(B.shape[-1])
    return {"T": dtype, "P": x.shape[-1], "N": B.shape[-1], "NA": A.shape[-1],
            "SEG": seg, "SUBS": SPAN // seg}


def _per_head_rates(A):
    return (A if A.ndim == 2 else A[:, None]).astype(mx.float32)


def _forward(x, dt, A, B, C, state):
    batch, length, heads, width = x.shape
    dtype, (x, dt, B, C) = in_one_dtype(x, dt, B, C)
    rates = _per_head_rates(A)
    ckpt_shape = (batch, segments(length, SPAN) + 1, heads, width, B.shape[-1])
    return launch(
        FORWARD,
        (x, dt, rates, B, C, state),
        {"y": (x.shape, dtype), "ckpt": (ckpt_shape, mx.float32)},
        threads=batch * heads * lanes(width),
        template=_template(x, rates, B, dtype),
    )


def _backward(dy, dfinal, ckpt, x, dt, A, B, C, state):
    batch, length, heads, width = x.shape
    dtype, (x_, dt_, B_, C_) = in_one_dtype(x, dt, B, C)
    rates = _per_head_rates(A)
    f32 = mx.float32
    dx, ddt, dA, dB, dC, dh0 = launch(
        BACKWARD,
        (x_, dt_, rates, B_, C_, ckpt, dy, dfinal),
        {"dx": (x.shape, dtype), "ddt": (dt.shape, f32),
         "dA": ((batch, heads, width, rates.shape[1]), f32),
         "dB": (B.shape, f32), "dC": (C.shape, f32), "dh0": (state.shape, f32)},
        threads=batch * heads * lanes(width),
        template=_template(x, rates, B, dtype),
        init_value=0.0,
    )
    return dx, ddt, dA.sum((0, 2)).reshape(A.shape), dB, dC, dh0


def _unsupported(bound, arrays, backend):
    dims = bound.dims
    if dims["N"] > 128:
        return f"N={dims['N']} > 128 does not fit the kernel's registers"
    ckpt = math.prod(bound.batch) * (dims["L"] // SPAN + 2) * dims["H"] * dims["P"]
    return common_unsupported(arrays, ckpt * dims["N"])


def _slower(bound):
    return large_state_crossover(bound.dims, "P", "N", _seg(bound.dims["N"]))


KERNEL = KernelPath(
    run=checkpointed(_forward, _backward), unsupported=_unsupported, slower=_slower
)

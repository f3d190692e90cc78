"""Fused kernels for ``"s6"``, the Mamba-1 selective scan.

One thread per channel ``d`` holds ``h[d, :]`` (``N`` values) in registers;
lanes of a warp are consecutive channels, so the gradients of ``B`` and
``C`` (sums over ``d``) are warp sums, one partial per warp.
"""

import math

import mlx.core as mx

from .chassis import (
    WARP,
    KernelPath,
    Source,
    checkpointed,
    common_unsupported,
    in_one_dtype,
    lanes,
    launch,
    segments,
)

_PROLOGUE = """
    const int B = u_shape[0];
    const int L = u_shape[1];
    const int D = u_shape[2];
    const int DP = (D + 31) / 32 * 32;
    const int NS = (L + SEG - 1) / SEG;
    const int tid = THREAD_ID;
    const int b = tid / DP;
    const int d = tid % DP;
    const bool active = d < D;
"""

FORWARD = Source(
    "s6_fwd",
    inputs=("u", "delta", "A", "Bm", "Cm", "h0"),
    outputs=("y", "ckpt"),
    body=_PROLOGUE + """
    if (b >= B || !active) return;
    float h[N];
    for (int n = 0; n < N; ++n) {
        h[n] = h0[(b * D + d) * N + n];
        ckpt[((b * (NS + 1)) * D + d) * N + n] = h[n];
    }
    for (int t = 0; t < L; ++t) {
        const int i = (b * L + t) * D + d;
        const int r = (b * L + t) * N;
        const float dl = static_cast<float>(delta[i]);
        const float uu = static_cast<float>(u[i]);
        float out = 0.0f;
        for (int n = 0; n < N; ++n) {
            h[n] = EXP(dl * A[d * N + n]) * h[n] + dl * static_cast<float>(Bm[r + n]) * uu;
            out += static_cast<float>(Cm[r + n]) * h[n];
        }
        y[i] = static_cast<T>(out);
        if ((t + 1) % SEG == 0 || t == L - 1) {
            const int k = ((b * (NS + 1) + (t + SEG) / SEG) * D + d) * N;
            for (int n = 0; n < N; ++n) ckpt[k + n] = h[n];
        }
    }
""",
)

BACKWARD = Source(
    "s6_bwd",
    inputs=("u", "delta", "A", "Bm", "Cm", "ckpt", "dy", "dfinal"),
    outputs=("du", "ddelta", "dA", "dB", "dC", "dh0"),
    body=_PROLOGUE + """
    if (b >= B) return;  // whole warps only: DP is a multiple of 32
    const int W = DP / 32;
    const int warp = d / 32;
    float carry[N];   // dLoss/dh[t] from steps after t
    float dA_acc[N];
    for (int n = 0; n < N; ++n) {
        carry[n] = active ? dfinal[(b * D + d) * N + n] : 0.0f;
        dA_acc[n] = 0.0f;
    }
    float before[SEG * N];  // h[t-1] for each step t of the segment
    for (int s = NS - 1; s >= 0; --s) {
        const int t0 = s * SEG;
        const int t1 = (t0 + SEG < L) ? t0 + SEG : L;
        float h[N];
        for (int n = 0; n < N; ++n) {
            h[n] = active ? ckpt[((b * (NS + 1) + s) * D + d) * N + n] : 0.0f;
        }
        for (int t = t0; t < t1; ++t) {
            const int i = (b * L + t) * D + d;
            const int r = (b * L + t) * N;
            const float dl = active ? static_cast<float>(delta[i]) : 0.0f;
            const float uu = active ? static_cast<float>(u[i]) : 0.0f;
            for (int n = 0; n < N; ++n) {
                const float an = active ? A[d * N + n] : 0.0f;
                before[(t - t0) * N + n] = h[n];
                h[n] = EXP(dl * an) * h[n] + dl * static_cast<float>(Bm[r + n]) * uu;
            }
        }
        for (int t = t1 - 1; t >= t0; --t) {
            const int i = (b * L + t) * D + d;
            const int r = (b * L + t) * N;
            const float dl = active ? static_cast<float>(delta[i]) : 0.0f;
            const float uu = active ? static_cast<float>(u[i]) : 0.0f;
            const float g_out = active ? static_cast<float>(dy[i]) : 0.0f;
            float du_t = 0.0f;
            float ddl = 0.0f;
            for (int n = 0; n < N; ++n) {
                const float an = active ? A[d * N + n] : 0.0f;
                const float decay = EXP(dl * an);
                const float prev = before[(t - t0) * N + n];
                const float bn = static_cast<float>(Bm[r + n]);
                const float cn = static_cast<float>(Cm[r + n]);
                const float ht = decay * prev + dl * bn * uu;
                const float gt = carry[n] + cn * g_out;
                const float dC_n = WARP_SUM(ht * g_out);
                const float dB_n = WARP_SUM(gt * dl * uu);
                if (LANE_ID == 0) {
                    dC[((b * L + t) * W + warp) * N + n] = dC_n;
                    dB[((b * L + t) * W + warp) * N + n] = dB_n;
                }
                du_t += gt * dl * bn;
                ddl += gt * (an * decay * prev + bn * uu);
                dA_acc[n] += gt * dl * decay * prev;
                carry[n] = decay * gt;
            }
            if (active) {
                du[i] = du_t;
                ddelta[i] = ddl;
            }
        }
    }
    if (active) {
        for (int n = 0; n < N; ++n) {
            dh0[(b * D + d) * N + n] = carry[n];
            dA[(b * D + d) * N + n] = dA_acc[n];
        }
    }
""",
)


def _seg(n: int) -> int:
    return 32 if n <= 16 else 16


def _forward(u, delta, A, B, C, state):
    batch, length, width = u.shape
    n, seg = A.shape[1], _seg(A.shape[1])
    dtype, (u, delta, B, C) = in_one_dtype(u, delta, B, C)
    return launch(
        FORWARD,
        (u, delta, A.astype(mx.float32), B, C, state),
        {"y": (u.shape, dtype),
         "ckpt": ((batch, segments(length, seg) + 1, width, n), mx.float32)},
        threads=batch * lanes(width),
        template={"T": dtype, "N": n, "SEG": seg},
    )


def _backward(dy, dfinal, ckpt, u, delta, A, B, C, state):
    batch, length, width = u.shape
    n, seg = A.shape[1], _seg(A.shape[1])
    dtype, (u_, delta_, B_, C_) = in_one_dtype(u, delta, B, C)
    f32 = mx.float32
    warps = lanes(width) // WARP
    du, ddelta, dA, dB, dC, dh0 = launch(
        BACKWARD,
        (u_, delta_, A.astype(f32), B_, C_, ckpt, dy, dfinal),
        {"du": (u.shape, f32), "ddelta": (u.shape, f32), "dA": ((batch, width, n), f32),
         "dB": ((batch, length, warps, n), f32), "dC": ((batch, length, warps, n), f32),
         "dh0": (state.shape, f32)},
        threads=batch * lanes(width),
        template={"T": dtype, "N": n, "SEG": seg},
    )
    return du, ddelta, dA.sum(0), dB.sum(2), dC.sum(2), dh0


def _unsupported(bound, arrays, backend):
    if bound.dims["N"] > 64:
        return f"N={bound.dims['N']} > 64 does not fit the kernel's registers"
    dims = bound.dims
    ckpt = math.prod(bound.batch) * (dims["L"] // _seg(dims["N"]) + 2) * dims["D"] * dims["N"]
    return common_unsupported(arrays, ckpt)


KERNEL = KernelPath(run=checkpointed(_forward, _backward), unsupported=_unsupported)

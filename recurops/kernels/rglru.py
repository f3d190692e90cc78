"""Fused kernels for ``"rglru"``: ``h <- a * h + x``, one thread per channel."""

import mlx.core as mx

from .chassis import (
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
    const int B = a_shape[0];
    const int L = a_shape[1];
    const int D = a_shape[2];
    const int NS = (L + SEG - 1) / SEG;
    const int tid = THREAD_ID;
    if (tid >= B * D) return;
    const int b = tid / D;
    const int d = tid % D;
"""

FORWARD = Source(
    "rglru_fwd",
    inputs=("a", "x", "h0"),
    outputs=("y", "ckpt"),
    body=_PROLOGUE + """
    float h = h0[tid];
    ckpt[(b * (NS + 1)) * D + d] = h;
    for (int t = 0; t < L; ++t) {
        const int i = (b * L + t) * D + d;
        h = static_cast<float>(a[i]) * h + static_cast<float>(x[i]);
        y[i] = static_cast<T>(h);
        if ((t + 1) % SEG == 0 || t == L - 1) {
            ckpt[(b * (NS + 1) + (t + SEG) / SEG) * D + d] = h;
        }
    }
""",
)

BACKWARD = Source(
    "rglru_bwd",
    inputs=("a", "x", "ckpt", "dy", "dfinal"),
    outputs=("da", "dx", "dh0"),
    body=_PROLOGUE + """
    float carry = dfinal[tid];  // dLoss/dh[t] from steps after t
    float before[SEG];          // h[t-1] for each step t of the segment
    for (int s = NS - 1; s >= 0; --s) {
        const int t0 = s * SEG;
        const int t1 = (t0 + SEG < L) ? t0 + SEG : L;
        float h = ckpt[(b * (NS + 1) + s) * D + d];
        for (int t = t0; t < t1; ++t) {
            const int i = (b * L + t) * D + d;
            before[t - t0] = h;
            h = static_cast<float>(a[i]) * h + static_cast<float>(x[i]);
        }
        for (int t = t1 - 1; t >= t0; --t) {
            const int i = (b * L + t) * D + d;
            const float grad = static_cast<float>(dy[i]) + carry;
            dx[i] = grad;
            da[i] = grad * before[t - t0];
            carry = static_cast<float>(a[i]) * grad;
        }
    }
    dh0[tid] = carry;
""",
)

SEG = 32


def _forward(a, x, state):
    batch, length, width = a.shape
    dtype, inputs = in_one_dtype(a, x)
    return launch(
        FORWARD,
        (*inputs, state),
        {"y": (a.shape, dtype),
         "ckpt": ((batch, segments(length, SEG) + 1, width), mx.float32)},
        threads=lanes(batch * width),
        template={"T": dtype, "SEG": SEG},
    )


def _backward(dy, dfinal, ckpt, a, x, state):
    dtype, inputs = in_one_dtype(a, x)
    return launch(
        BACKWARD,
        (*inputs, ckpt, dy, dfinal),
        {"da": (a.shape, mx.float32), "dx": (a.shape, mx.float32),
         "dh0": (state.shape, mx.float32)},
        threads=lanes(a.shape[0] * a.shape[2]),
        template={"T": dtype, "SEG": SEG},
    )


KERNEL = KernelPath(
    run=checkpointed(_forward, _backward),
    unsupported=lambda bound, arrays, backend: common_unsupported(arrays),
)

"""Fused kernels for ``"rglru"``: ``h <- a * h + x``, one thread per channel."""

import mlx.core as mx

from .._kind import STEP_FORM_STEPS
from .chassis import (
    KernelPath,
    Source,
    checkpointed,
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
""" + tiled_steps(
        tile="""
        float a_t[TILE];
        float x_t[TILE];""",
        load="""
            const int i = (b * L + t) * D + d;
            a_t[s] = static_cast<float>(a[i]);
            x_t[s] = static_cast<float>(x[i]);""",
        step="""
            h = a_t[s] * h + x_t[s];
            y[(b * L + t) * D + d] = static_cast<T>(h);
            if ((t + 1) % SEG == 0 || t == L - 1) {
                ckpt[(b * (NS + 1) + (t + SEG) / SEG) * D + d] = h;
            }""",
    ),
)

BACKWARD = Source(
    "rglru_bwd",
    inputs=("a", "x", "ckpt", "dy", "dfinal"),
    outputs=("da", "dx", "dh0"),
    body=_PROLOGUE + """
    float carry = dfinal[tid];  // dLoss/dh[t] from steps after t
    for (int sg = NS - 1; sg >= 0; --sg) {
        const int t0 = sg * SEG;
        // the segment recomputed from its checkpoint, keeping what the adjoint
        // reads, so that it loads nothing (steps past L repeat the last one)
        float before[SEG];  // h[t-1] for each step t of the segment
        float a_s[SEG];
        float dy_s[SEG];
        float h = ckpt[(b * (NS + 1) + sg) * D + d];
        for (int s = 0; s < SEG; ++s) {
            const int i = (b * L + ((t0 + s < L) ? t0 + s : L - 1)) * D + d;
            a_s[s] = static_cast<float>(a[i]);
            dy_s[s] = static_cast<float>(dy[i]);
            before[s] = h;
            h = a_s[s] * h + static_cast<float>(x[i]);
        }
        for (int s = SEG - 1; s >= 0; --s) {
            const int t = t0 + s;
            if (t >= L) continue;
            const int i = (b * L + t) * D + d;
            const float grad = dy_s[s] + carry;
            dx[i] = grad;
            da[i] = grad * before[s];
            carry = a_s[s] * grad;
        }
    }
    dh0[tid] = carry;
""",
)

SEG = 32
# Steps whose inputs the forward loads at once. H100, bf16, B=8 L=2048 D=2048:
# forward 0.39-0.46 ms at 16 against 0.48-0.65 at 8 and 0.47-0.53 at 32.
TILE = 16


def _forward(a, x, state):
    batch, length, width = a.shape
    dtype, inputs = in_one_dtype(a, x)
    return launch(
        FORWARD,
        (*inputs, state),
        {"y": (a.shape, dtype),
         "ckpt": ((batch, segments(length, SEG) + 1, width), mx.float32)},
        threads=lanes(batch * width),
        template={"T": dtype, "SEG": SEG, "TILE": TILE},
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


def _slower(bound):
    """Calls of a few steps (decoding) take the fallback's step form: three
    elementwise ops a step dispatch faster than the kernel's launch. H100,
    bf16, one-token steps at D=2048, B=1 and B=16 (docs/kernels.md,
    "Decoding"), queued: 65-66 against 85-95 us a step in one run, 30-32
    against 44-46 us in another."""
    steps = bound.dims["L"]
    if steps <= STEP_FORM_STEPS:
        return (f"L={steps} <= {STEP_FORM_STEPS} steps run faster as the fallback's "
                f"elementwise step form than as a kernel launch")
    return None


KERNEL = KernelPath(
    run=checkpointed(_forward, _backward),
    unsupported=lambda bound, arrays, backend: common_unsupported(arrays),
    slower=_slower,
)

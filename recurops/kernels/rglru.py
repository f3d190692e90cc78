"""Fused kernels for ``"rglru"``: ``h <- a * h + x``, one thread per channel.

A checkpoint every ``SEG`` steps; the backward recomputes a segment from its
checkpoint and runs its adjoint. Small launches over long sequences run
chunks of steps side by side (``kernels/spans.py``): each chunk's end from
zero and its product of decays, the state entering each chunk, then the
forward, one thread a chunk and channel; the backward likewise, from each
chunk's carry.
"""

import mlx.core as mx

from .._kind import STEP_FORM_STEPS
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
    const int D = a_shape[2];
    const int NSEG = (L + SEG - 1) / SEG;
""" + chunk_prologue("(B * D + 31) / 32 * 32") + """
    if (idle || tid >= B * D) return;
    const int b = tid / D;
    const int d = tid % D;
    const int k = (b * NC + chunk) * D + d;  // the chunk's entry of a [B, NC, D] array
"""

_TILE = """
        float a_t[TILE];
        float x_t[TILE];"""
_LOAD = """
            const int i = (b * L + t) * D + d;
            a_t[s] = static_cast<float>(a[i]);
            x_t[s] = static_cast<float>(x[i]);"""

FORWARD = Source(
    "rglru_fwd",
    inputs=("a", "x", "starts", "plan"),
    outputs=("y", "ckpt"),
    body=_PROLOGUE + """
    float h = starts[k];
    if (chunk == 0) ckpt[(b * (NSEG + 1)) * D + d] = h;
""" + tiled_steps(
        tile=_TILE,
        load=_LOAD,
        step="""
            h = a_t[s] * h + x_t[s];
            y[(b * L + t) * D + d] = static_cast<T>(h);
            if ((t + 1) % SEG == 0 || t == L - 1) {
                ckpt[(b * (NSEG + 1) + (t + SEG) / SEG) * D + d] = h;
            }""",
        first="t_first", end="t_end",
    ),
)

# Each chunk's end from zero and its product of decays (chunks side by side).
ENDS = Source(
    "rglru_ends",
    inputs=("a", "x", "plan"),
    outputs=("ends", "decays"),
    body=_PROLOGUE + """
    float h = 0.0f;
    float decay = 1.0f;
""" + tiled_steps(tile=_TILE, load=_LOAD, step="""
            h = a_t[s] * h + x_t[s];
            decay *= a_t[s];""", first="t_first", end="t_end") + """
    ends[k] = h;
    decays[k] = decay;
""",
)

# Each chunk's adjoint carry from zero at its end, and its product of decays
# (chunks side by side).
CARRIES = Source(
    "rglru_carries",
    inputs=("a", "dy", "plan"),
    outputs=("carries", "decays"),
    body=_PROLOGUE + """
    float carry = 0.0f;
    float decay = 1.0f;
    for (int t = t_end - 1; t >= t_first; --t) {
        const int i = (b * L + t) * D + d;
        const float a_t = static_cast<float>(a[i]);
        carry = a_t * (carry + static_cast<float>(dy[i]));
        decay *= a_t;
    }
    carries[k] = carry;
    decays[k] = decay;
""",
)

BACKWARD = Source(
    "rglru_bwd",
    inputs=("a", "x", "ckpt", "dy", "dend", "plan"),
    outputs=("da", "dx", "dh0"),
    body=_PROLOGUE + """
    float carry = dend[k];  // dLoss/dh[t] from steps after t
    for (int sg = (t_end + SEG - 1) / SEG - 1; sg >= t_first / SEG; --sg) {
        const int t0 = sg * SEG;
        // the segment recomputed from its checkpoint, keeping what the adjoint
        // reads, so that it loads nothing (steps past L repeat the last one)
        float before[SEG];  // h[t-1] for each step t of the segment
        float a_s[SEG];
        float dy_s[SEG];
        float h = ckpt[(b * (NSEG + 1) + sg) * D + d];
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
    if (chunk == 0) dh0[tid] = carry;
""",
)

SEG = 32
# Steps whose inputs the forward loads at once. H100, bf16, B=8 L=2048 D=2048:
# forward 0.39-0.46 ms at 16 against 0.48-0.65 at 8 and 0.47-0.53 at 32.
TILE = 16


def _plan(a, state, backward=False):
    """The chunks of the forward, or of the backward (``spans.plan``):
    ``(threads a chunk, chunks, plan)``."""
    rows = lanes(a.shape[0] * a.shape[2])
    span, chunks = spans.plan("rglru", rows, a.shape[1], state.size, backward)
    return rows, chunks, spans.plan_array(span, chunks)


def _forward(a, x, state):
    batch, length, width = a.shape
    dtype, inputs = in_one_dtype(a, x)
    rows, chunks, plan = _plan(a, state)
    template = {"T": dtype, "SEG": SEG, "TILE": TILE} | spans.baked(chunks)
    starts = state[:, None]
    if chunks > 1:
        per_chunk = ((batch, chunks, width), mx.float32)
        ends, decays = launch(ENDS, (*inputs, plan), {"ends": per_chunk, "decays": per_chunk},
                              threads=rows * chunks, template=template)
        starts = spans.entering_states(decays, ends, state)
    return launch(
        FORWARD,
        (*inputs, starts, plan),
        {"y": (a.shape, dtype),
         "ckpt": ((batch, segments(length, SEG) + 1, width), mx.float32)},
        threads=rows * chunks,
        template=template,
    )


def _backward(dy, dfinal, ckpt, a, x, state):
    batch, _, width = a.shape
    dtype, inputs = in_one_dtype(a, x)
    rows, chunks, plan = _plan(a, state, backward=True)
    template = {"T": dtype, "SEG": SEG, "TILE": TILE} | spans.baked(chunks)
    dend = dfinal[:, None]
    if chunks > 1:
        per_chunk = ((batch, chunks, width), mx.float32)
        carries, decays = launch(CARRIES, (inputs[0], dy, plan),
                                 {"carries": per_chunk, "decays": per_chunk},
                                 threads=rows * chunks, template=template)
        dend = spans.leaving_carries(decays, carries, dfinal)
    return launch(
        BACKWARD,
        (*inputs, ckpt, dy, dend, plan),
        {"da": (a.shape, mx.float32), "dx": (a.shape, mx.float32),
         "dh0": (state.shape, mx.float32)},
        threads=rows * chunks,
        template=template,
    )


def _slower(bound, arrays):
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

"""Spans side by side: the kernels of every kind at small launches.

A kernel gives each lane of a state one thread that walks every step, one
after another. With few heads and batch rows that leaves most of
the GPU idle while each thread makes a long chain of dependent steps. The
state recurrence is linear, ``h[t] = a[t] * h[t-1] + u[t]`` with ``a``
elementwise, so a run of steps from state ``h`` ends in ``P * h + e``,
where ``P`` is the product of the run's decays and ``e`` where it ends from
zero. The spans between checkpoints then run side by side in three passes:

1. each span from a zero state (each kind's ``ENDS`` kernel; ``ssd`` and
   ``gla`` build theirs with ``chassis.chunk_ends``): ``e[s]``;
2. the states entering the spans, ``h[s] = P[s-1] h[s-1] + e[s-1]`` from the
   initial state (one thread per state element, ``chunked.pass_states``;
   ``rotlru``, whose ``P`` are complex, has its own ``PASS``);
3. the kernel's forward, each span from its entering state.

The backward does the same with the adjoint, whose recurrence,
``carry[t-1] = a[t] (carry[t] + dh[t])``, needs no states: each span's
carry from zero at its end (``CARRIES``; ``chassis.chunk_carries`` for
``ssd`` and ``gla``), the carries entering each span from the gradient of
the final state, then the backward kernel, each span from its carry.

That is about 1.5x the work for ``NS``-fold threads. ``plan`` chooses it
for small launches over long sequences, with spans short enough (down to
32 steps) to fill the GPU, and for the backward up to larger launches than
for the forward (``BACKWARD_LAUNCH``), from the forward's checkpoints.
"""

from __future__ import annotations

import mlx.core as mx

from . import chunked
from .chassis import SPAN, segments

# A launch of at most SMALL_LAUNCH[kind] threads over at least MIN_LENGTH
# steps runs its spans side by side, the longest spans that give FILL
# threads. H100, bf16, kernel path, forward+backward against the spans one
# after another (docs/kernels.md, "Spans side by side"):
# - ssd and gla: 1.4-3.8x faster at 2048 to 6144 threads (ssd B=1 H=4 N=16
#   and A [H, N] B=1 H=8 N=64 and 128, gla B=1 H=12 K=V=64; L=1024 to
#   4096), 1.25-1.4x at 16384 (gla B=1 H=16 K=V=128, T=512 and per-channel
#   T=8192); at 18432 threads (B=3 H=12) forward+backward still gains at
#   three of four shapes but the forward loses at three of four, and at
#   32768 neither gains;
# - rglru, whose step is a single multiply-add: 1.7-2.4x at 2048 threads
#   (B=1 L=4096 D=2048, B=2 L=8192 D=1024), slower at 8192 and more.
# - s6: 3.3-4.4x at 6144 and 12288 threads (B=1 D=768 L=4096, B=1 D=1536
#   L=8192; N=16), 1.6-1.9x at 24576 (B=2 D=1536 L=2048) with the forward
#   gaining too; at 49152 (B=4) forward+backward gains 1.1-1.25x but the
#   forward loses 5-15%.
# - rotlru: 2.1-3.2x at 512 and 1024 threads (B=1 L=4096 P=512, B=2 L=8192
#   P=512), 1.35-1.6x at 4096 (B=4 L=2048 P=1024) with the forward even; at
#   8192 forward+backward gains 1.1-1.2x but the forward loses 2-5%, and at
#   16384 both lose.
SMALL_LAUNCH = {"ssd": 2**14, "gla": 2**14, "rglru": 2**11, "s6": 2**15, "rotlru": 2**12}
# The backward may run its spans side by side where the forward does not, up
# to BACKWARD_LAUNCH[kind] threads: the forward then loses by the extra pass
# while the backward, the longer sweep, still gains. rglru, rotlru and s6
# checkpoint every SEG steps whatever the spans, so their backward plans its
# spans freely; ssd and gla checkpoint once a span, so theirs keeps the
# forward's 256 steps, and only over BACKWARD_SPANS spans or more. H100, bf16,
# kernel path, forward+backward, the backward side by side against the
# forward's plan (docs/kernels.md, "The backward's own spans"):
# - ssd N=16: 1.3-1.9x at 18432 to 32768 threads and L=1024 to 4096 (B=2
#   L=4096 H=24: 4.35 against 8.08 ms); slower at the large shape (262144);
# - gla K=V=64, T=2048 (18432 threads): 1.2x per head and per channel; at
#   T=512 (two spans) 3-7% slower, and level or slower at 32768 and more;
# - s6 N=16: 1.2x at 49152 threads (B=4 L=2048 D=1536), slower at 98304 and
#   at N=64 or L=512; rotlru: 1.05-1.25x at 6144 and 8192 threads, level at
#   16384; rglru: level or slower at 8192 and 16384.
BACKWARD_LAUNCH = {"ssd": 2**15, "gla": 3 * 2**13, "rglru": 2**11, "s6": 2**16, "rotlru": 2**13}
CHECKPOINT_A_SPAN = ("ssd", "gla")
BACKWARD_SPANS = 4
MIN_LENGTH = 512
FILL = 2**17
SPANS = (SPAN, 128, 64, 32)


def plan(kind: str, threads: int, length: int, state_size: int,
         backward: bool = False) -> tuple[int, int]:
    """``(span, chunks)`` for ``kind``'s launch of ``threads`` threads over
    ``length`` steps with ``state_size`` state elements in all: the steps of
    a span, and 1 (the spans one after another) or the span count (side by
    side, the longest spans that give ``FILL`` threads, down to 32 steps).
    Checkpoints stay within 32-bit indexing. ``backward`` plans the
    backward (up to ``BACKWARD_LAUNCH`` threads; for the kinds in
    ``CHECKPOINT_A_SPAN`` the forward's span, over ``BACKWARD_SPANS`` spans
    or more)."""
    if backward and kind in CHECKPOINT_A_SPAN:
        span, chunks = plan(kind, threads, length, state_size)
        if (chunks == 1 and threads <= BACKWARD_LAUNCH[kind]
                and segments(length, span) >= BACKWARD_SPANS):
            return span, _indexable(segments(length, span), state_size)
        return span, chunks
    small = BACKWARD_LAUNCH[kind] if backward else SMALL_LAUNCH[kind]
    if threads <= small and length >= MIN_LENGTH:
        span = next((s for s in SPANS if threads * segments(length, s) >= FILL), SPANS[-1])
        chunks = _indexable(segments(length, span), state_size)
        if chunks > 1:
            return span, chunks
    return SPAN, 1


def _indexable(chunks: int, state_size: int) -> int:
    """``chunks``, or 1 where a state per chunk would pass 32-bit indexing."""
    return chunks if state_size * (chunks + 1) < 2**31 else 1


def plan_array(span: int, chunks: int) -> mx.array:
    """The kernels' ``plan`` input (``chassis.chunk_prologue``)."""
    return mx.array([span, chunks], dtype=mx.int32)


def baked(chunks: int) -> dict:
    """The kernels' template constant for a plan of ``chunks``:
    ``SIDE_BY_SIDE`` is 0 for the spans one after another, whose span
    (``SPAN``) and chunk count (1) ``chassis.chunk_prologue`` then bakes in,
    so the piece loops of the two-level kernels have constant bounds."""
    return {"SIDE_BY_SIDE": int(chunks > 1)}


def per_span(x: mx.array, span: int, reduce, fill: float) -> mx.array:
    """``reduce(axis=2)`` over each span of ``x [B, L, ...]`` in float32 (the
    last span padded with ``fill``): ``[B, NS, ...]``."""
    batch, length = x.shape[:2]
    count = segments(length, span)
    x = x.astype(mx.float32)
    pad = count * span - length
    if pad:
        x = mx.concatenate([x, mx.full((batch, pad, *x.shape[2:]), fill, mx.float32)], axis=1)
    return reduce(x.reshape(batch, count, span, *x.shape[2:]), axis=2)


def entering_states(decays: mx.array, ends: mx.array, state: mx.array) -> mx.array:
    """The state entering each span, ``[B, NS, ...]``, from each span's decay
    product ``decays`` (broadcasting against ``ends``), its end from zero
    ``ends [B, NS, ...]`` and the initial ``state``."""
    before, _ = chunked.pass_states(_full(decays, ends), ends, state)
    return before


def leaving_carries(decays: mx.array, carries: mx.array, dfinal: mx.array) -> mx.array:
    """The cotangent of the state each span ends in, from later steps,
    ``[B, NS, ...]``: ``dfinal`` for the last span, and for span ``s`` the
    carry of span ``s + 1`` from zero (``carries``) plus its decay product
    times span ``s + 1``'s."""
    rev = slice(None, None, -1)
    before, _ = chunked.pass_states(_full(decays, carries)[:, rev], carries[:, rev], dfinal)
    return before[:, rev]


def _full(decays: mx.array, states: mx.array) -> mx.array:
    """``decays`` as ``pass_states`` takes them: varying along leading state
    axes only (spread over the whole state where they vary along a later one)."""
    shape = decays.shape
    last = max((i for i in range(2, len(shape)) if shape[i] > 1), default=1)
    if any(shape[i] == 1 for i in range(2, last)):
        return mx.broadcast_to(decays, states.shape)
    return decays

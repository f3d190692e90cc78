"""The kernel chassis shared by every kind.

* One kernel body per kind and direction, written once in a small neutral
  dialect: C++ plus the tokens below. ``render`` turns it into Metal (for
  ``mx.fast.metal_kernel``) or CUDA (for ``mx.fast.cuda_kernel``).
* ``build`` compiles a body once per backend and caches it. Everything baked
  into a kernel (head dims, ``SEG``, the input dtype ``T``, flags) is passed as
  template arguments, which MLX folds into the compiled kernel's name; batch
  and length are read at run time from the input shapes (``x_shape[i]``), so
  a new prompt length never compiles a new kernel.
* ``checkpointed`` wires a forward kernel (outputs and a state checkpoint
  every ``SEG`` steps) and a backward kernel (recompute each segment from its
  checkpoint, then the adjoint sweep) into one ``mx.custom_function``.
* ``tiled_steps`` and ``tiled_adjoint`` sweep the steps forwards and
  backwards in tiles, loading a tile's inputs before running its steps;
  ``tiled_forward`` and ``span_backward`` are the forward and the backward
  sweep of the two-level kernels (a
  checkpoint every ``SPAN`` steps, recomputed in ``SEG``-step pieces), with
  a kind's load, recompute step and adjoint step filled in.

Neutral tokens: ``THREAD_ID`` (global thread index along x), ``LANE_ID``
(index within the 32-lane simdgroup / warp), ``WARP_SUM(v)`` (sum over the
32 lanes; every lane of the warp must reach it), ``LANE_SUM(v, first, last)``
(sum over the lanes whose index differs from this lane's only in the bits
``first`` to ``last``, powers of two; nothing when ``first > last``; every
lane must reach it), ``SHUFFLE_XOR(v, mask)`` (``v`` of the lane whose
index is this lane's xor ``mask``; every lane must reach it), ``EXP(v)``, and
``ATOMIC_ADD(&out[i], v)`` (a relaxed atomic float add into an output that
``launch`` was asked to zero, ``init_value=0``).
Kernels are launched with whole warps only: a warp either returns as a whole
or reaches every ``WARP_SUM``.

Block-level kernels also have ``SHARED`` (declares an array in threadgroup /
shared memory, at the top level of the body) and ``BARRIER()`` (every
thread of the threadgroup waits there), and the warp-level matrix tiles of
``TILES`` (tensor cores on CUDA, ``simdgroup_matrix`` on Metal), whose
prelude a body gets when it names ``recurops_tile``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

from .._kind import promote

WARP = 32
THREADS_PER_GROUP = 128


@dataclass(frozen=True)
class Dialect:
    name: str
    header: str
    tokens: dict


CUDA = Dialect(
    "cuda",
    header="""
__device__ __forceinline__ float recurops_warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}
__device__ __forceinline__ float recurops_shuffle_xor(float v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}
__device__ __forceinline__ float recurops_lane_sum(float v, int first, int last) {
  for (int offset = first; offset <= last; offset <<= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}
""",
    tokens={
        "THREAD_ID": "((int)(blockIdx.x * blockDim.x + threadIdx.x))",
        "LANE_ID": "((int)(threadIdx.x & 31u))",
        "WARP_SUM": "recurops_warp_sum",
        "LANE_SUM": "recurops_lane_sum",
        "SHUFFLE_XOR": "recurops_shuffle_xor",
        "EXP": "expf",
        "ATOMIC_ADD": "atomicAdd",
        "SHARED": "__shared__",
        "BARRIER": "__syncthreads",
    },
)

METAL = Dialect(
    "metal",
    header="""
inline void recurops_atomic_add(device float* out, float v) {
  atomic_fetch_add_explicit((device atomic_float*)out, v, memory_order_relaxed);
}
inline float recurops_shuffle_xor(float v, int mask) {
  return simd_shuffle_xor(v, (ushort)mask);
}
inline float recurops_lane_sum(float v, int first, int last) {
  for (int offset = first; offset <= last; offset <<= 1) {
    v += simd_shuffle_xor(v, (ushort)offset);
  }
  return v;
}
inline void recurops_barrier() { threadgroup_barrier(mem_flags::mem_threadgroup); }
""",
    tokens={
        "THREAD_ID": "((int)thread_position_in_grid.x)",
        "LANE_ID": "((int)thread_index_in_simdgroup)",
        "WARP_SUM": "simd_sum",
        "LANE_SUM": "recurops_lane_sum",
        "SHUFFLE_XOR": "recurops_shuffle_xor",
        "EXP": "metal::exp",
        "ATOMIC_ADD": "recurops_atomic_add",
        "SHARED": "threadgroup",
        "BARRIER": "recurops_barrier",
    },
)

DIALECTS = {"cuda": CUDA, "metal": METAL}

# Warp-level matrix tiles, the same functions in both dialects:
#   recurops_tile      a 16 x 8 float32 accumulator held by the 32 lanes of a warp
#   recurops_tile_a    a 16 x 8 left operand, loaded once and used for many products
#   recurops_tile_zero(t)                  t = 0
#   recurops_load_a(fa, a, lda)            fa = A, A[i, k] = a[i * lda + k]
#   recurops_load_a_t(fa, a, lda)          fa = A stored transposed, A[i, k] = a[k * lda + i]
#   recurops_tile_load(t, c, offset, ldc)  t[i, j] = c[offset + i * ldc + j]
#   recurops_tile_scale(t, s)              t *= s
#   recurops_tile_mma(t, fa, b, ldb, bt)   t += A B, B[k, j] = b[k * ldb + j]
#                                          (b[j * ldb + k] when bt: B stored transposed)
#   recurops_tile_store(t, c, offset, ldc) c[offset + i * ldc + j] = t[i, j]
#   recurops_tile_dot(t, u)                this lane's share of sum t[i, j] u[i, j]
#                                          (a warp sum of it is the whole)
#   recurops_tile_a_split, recurops_load_a_split, recurops_tile_mma_split
#                                          as the plain ones, float32-accurate on CUDA
#                                          (three TF32 products of split operands)
# Operands are read from threadgroup memory (any memory on CUDA); every lane of
# the warp must make the same call. CUDA: one mma.sync m16n8k8 with TF32
# operands (10-bit mantissa, rounded to nearest) and float32 accumulation;
# Metal: two 8 x 8 simdgroup products in float32.
TILES = {
    "cuda": """
#ifndef RECUROPS_MMA_PRIMITIVES  // the kernel simulator brings its own
__device__ __forceinline__ unsigned recurops_tf32(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ void recurops_mma_m16n8k8(float* c, const unsigned* a,
                                                     const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif
// Fragments as mma.sync lays them out: lane = 4 * row group + column in group.
struct recurops_tile { float c[4]; };
struct recurops_tile_a { unsigned a[4]; };
__device__ __forceinline__ void recurops_tile_zero(recurops_tile& t) {
  t.c[0] = t.c[1] = t.c[2] = t.c[3] = 0.0f;
}
__device__ __forceinline__ void recurops_load_a(recurops_tile_a& f, const float* a, int lda) {
  const int g = (threadIdx.x & 31) >> 2, q = threadIdx.x & 3;
  f.a[0] = recurops_tf32(a[g * lda + q]);
  f.a[1] = recurops_tf32(a[(g + 8) * lda + q]);
  f.a[2] = recurops_tf32(a[g * lda + q + 4]);
  f.a[3] = recurops_tf32(a[(g + 8) * lda + q + 4]);
}
__device__ __forceinline__ void recurops_load_a_t(recurops_tile_a& f, const float* a, int lda) {
  const int g = (threadIdx.x & 31) >> 2, q = threadIdx.x & 3;
  f.a[0] = recurops_tf32(a[q * lda + g]);
  f.a[1] = recurops_tf32(a[q * lda + g + 8]);
  f.a[2] = recurops_tf32(a[(q + 4) * lda + g]);
  f.a[3] = recurops_tf32(a[(q + 4) * lda + g + 8]);
}
template <typename P>
__device__ __forceinline__ void recurops_tile_load(recurops_tile& t, P c, long offset, int ldc) {
  const int g = (threadIdx.x & 31) >> 2, q = threadIdx.x & 3;
  t.c[0] = c[offset + g * ldc + 2 * q];
  t.c[1] = c[offset + g * ldc + 2 * q + 1];
  t.c[2] = c[offset + (g + 8) * ldc + 2 * q];
  t.c[3] = c[offset + (g + 8) * ldc + 2 * q + 1];
}
__device__ __forceinline__ void recurops_tile_scale(recurops_tile& t, float s) {
  t.c[0] *= s;
  t.c[1] *= s;
  t.c[2] *= s;
  t.c[3] *= s;
}
// A lane's share of the sum of products of two tiles' elements (the same layout
// in both): a warp sum of it is their inner product.
__device__ __forceinline__ float recurops_tile_dot(const recurops_tile& t, const recurops_tile& u) {
  return t.c[0] * u.c[0] + t.c[1] * u.c[1] + t.c[2] * u.c[2] + t.c[3] * u.c[3];
}
__device__ __forceinline__ void recurops_tile_mma(recurops_tile& t, const recurops_tile_a& f,
                                                  const float* b, int ldb, bool bt) {
  const int g = (threadIdx.x & 31) >> 2, q = threadIdx.x & 3;
  unsigned fb[2];
  fb[0] = recurops_tf32(bt ? b[g * ldb + q] : b[q * ldb + g]);
  fb[1] = recurops_tf32(bt ? b[g * ldb + q + 4] : b[(q + 4) * ldb + g]);
  recurops_mma_m16n8k8(t.c, f.a, fb);
}
// Float32-accurate products from TF32 ones: each operand split into its TF32
// rounding and the remainder (exact in float32, itself rounded to TF32: 2^-22
// of the operand), three products (hi hi + hi lo + lo hi; lo lo is below 2^-21).
struct recurops_tile_a_split { recurops_tile_a hi; recurops_tile_a lo; };
__device__ __forceinline__ unsigned recurops_tf32_rest(float x, unsigned hi) {
  return recurops_tf32(x - __uint_as_float(hi));
}
__device__ __forceinline__ void recurops_load_a_split(recurops_tile_a_split& f, const float* a,
                                                      int lda) {
  const int g = (threadIdx.x & 31) >> 2, q = threadIdx.x & 3;
  const float x[4] = {a[g * lda + q], a[(g + 8) * lda + q], a[g * lda + q + 4],
                      a[(g + 8) * lda + q + 4]};
  for (int i = 0; i < 4; ++i) {
    f.hi.a[i] = recurops_tf32(x[i]);
    f.lo.a[i] = recurops_tf32_rest(x[i], f.hi.a[i]);
  }
}
__device__ __forceinline__ void recurops_tile_mma_split(recurops_tile& t,
                                                        const recurops_tile_a_split& f,
                                                        const float* b, int ldb, bool bt) {
  const int g = (threadIdx.x & 31) >> 2, q = threadIdx.x & 3;
  const float x[2] = {bt ? b[g * ldb + q] : b[q * ldb + g],
                      bt ? b[g * ldb + q + 4] : b[(q + 4) * ldb + g]};
  unsigned hi[2], lo[2];
  for (int i = 0; i < 2; ++i) {
    hi[i] = recurops_tf32(x[i]);
    lo[i] = recurops_tf32_rest(x[i], hi[i]);
  }
  recurops_mma_m16n8k8(t.c, f.lo.a, hi);
  recurops_mma_m16n8k8(t.c, f.hi.a, lo);
  recurops_mma_m16n8k8(t.c, f.hi.a, hi);
}
template <typename P>
__device__ __forceinline__ void recurops_tile_store(const recurops_tile& t, P c, long offset,
                                                    int ldc) {
  const int g = (threadIdx.x & 31) >> 2, q = threadIdx.x & 3;
  c[offset + g * ldc + 2 * q] = t.c[0];
  c[offset + g * ldc + 2 * q + 1] = t.c[1];
  c[offset + (g + 8) * ldc + 2 * q] = t.c[2];
  c[offset + (g + 8) * ldc + 2 * q + 1] = t.c[3];
}
""",
    "metal": """
#include <metal_simdgroup_matrix>
struct recurops_tile { simdgroup_float8x8 top; simdgroup_float8x8 bottom; };
struct recurops_tile_a { simdgroup_float8x8 top; simdgroup_float8x8 bottom; };
inline void recurops_tile_zero(thread recurops_tile& t) {
  t.top = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  t.bottom = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
}
template <typename P>
inline void recurops_load_a(thread recurops_tile_a& f, P a, int lda) {
  simdgroup_load(f.top, a, lda);
  simdgroup_load(f.bottom, a + 8 * lda, lda);
}
template <typename P>
inline void recurops_load_a_t(thread recurops_tile_a& f, P a, int lda) {
  simdgroup_load(f.top, a, lda, ulong2(0, 0), true);
  simdgroup_load(f.bottom, a + 8, lda, ulong2(0, 0), true);
}
template <typename P>
inline void recurops_tile_load(thread recurops_tile& t, P c, long offset, int ldc) {
  simdgroup_load(t.top, c + offset, ldc);
  simdgroup_load(t.bottom, c + offset + 8 * ldc, ldc);
}
inline void recurops_tile_scale(thread recurops_tile& t, float s) {
  t.top.thread_elements() *= s;
  t.bottom.thread_elements() *= s;
}
inline float recurops_tile_dot(thread recurops_tile& t, thread recurops_tile& u) {
  float sum = 0.0f;
  for (int i = 0; i < 2; ++i) {
    sum += t.top.thread_elements()[i] * u.top.thread_elements()[i];
    sum += t.bottom.thread_elements()[i] * u.bottom.thread_elements()[i];
  }
  return sum;
}
template <typename P>
inline void recurops_tile_mma(thread recurops_tile& t, thread const recurops_tile_a& f,
                              P b, int ldb, bool bt) {
  simdgroup_float8x8 m;
  simdgroup_load(m, b, ldb, ulong2(0, 0), bt);
  simdgroup_multiply_accumulate(t.top, f.top, m, t.top);
  simdgroup_multiply_accumulate(t.bottom, f.bottom, m, t.bottom);
}
// simdgroup matrices multiply in float32: the split products are the plain ones
typedef recurops_tile_a recurops_tile_a_split;
template <typename P>
inline void recurops_load_a_split(thread recurops_tile_a_split& f, P a, int lda) {
  recurops_load_a(f, a, lda);
}
template <typename P>
inline void recurops_tile_mma_split(thread recurops_tile& t, thread const recurops_tile_a_split& f,
                                    P b, int ldb, bool bt) {
  recurops_tile_mma(t, f, b, ldb, bt);
}
template <typename P>
inline void recurops_tile_store(thread const recurops_tile& t, P c, long offset, int ldc) {
  simdgroup_store(t.top, c + offset, ldc);
  simdgroup_store(t.bottom, c + offset + 8 * ldc, ldc);
}
""",
}


def render(body: str, dialect: str) -> tuple[str, str]:
    """``(header, source)`` of ``body`` in ``dialect`` ("cuda" or "metal")."""
    spec = DIALECTS[dialect]
    pattern = re.compile(r"\b(" + "|".join(spec.tokens) + r")\b")
    header = spec.header + (TILES[dialect] if "recurops_tile" in body else "")
    return header, pattern.sub(lambda m: spec.tokens[m[1]], body)


@dataclass(frozen=True)
class Source:
    """One kernel: its name, argument names and neutral body."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    body: str


_CACHE: dict = {}
COMPILED: set = set()  # (kernel name, baked constants) launched so far


def build(source: Source, backend: str):
    """The compiled MLX kernel of ``source`` for ``backend``, built once."""
    key = (source.name, backend)
    if key not in _CACHE:
        header, body = render(source.body, backend)
        make = mx.fast.metal_kernel if backend == "metal" else mx.fast.cuda_kernel
        _CACHE[key] = make(
            name=f"recurops_{source.name}",
            input_names=list(source.inputs),
            output_names=list(source.outputs),
            source=body,
            header=header,
        )
    return _CACHE[key]


def backend() -> str:
    return "metal" if mx.metal.is_available() else "cuda"


def launch(source: Source, inputs, outputs: dict, threads: int, template: dict,
           init_value: float | None = None):
    """Run ``source`` over ``threads`` threads (a multiple of 32).

    ``outputs`` maps each output name to ``(shape, dtype)``; ``template``
    holds the baked constants; ``init_value`` fills the outputs before the
    kernel runs (0 for those it accumulates into with ``ATOMIC_ADD``).
    Returns the outputs as a tuple, in order.
    """
    assert threads % WARP == 0
    # ``build`` and ``backend`` are looked up here at call time on purpose:
    # recurops.testing.simulate() replaces them to run these sources on the CPU.
    kernel = build(source, backend())
    COMPILED.add((source.name, tuple(template.items())))
    shapes = [outputs[name] for name in source.outputs]
    return tuple(
        kernel(
            inputs=list(inputs),
            template=list(template.items()),
            grid=(max(threads, WARP), 1, 1),
            threadgroup=(THREADS_PER_GROUP, 1, 1),
            output_shapes=[s for s, _ in shapes],
            output_dtypes=[d for _, d in shapes],
            init_value=init_value,
        )
    )


_TILED_STEPS = """
    for (int t0 = @FIRST@; t0 < @END@; t0 += TILE) {
        // the tile's inputs first: independent loads, one memory latency a tile
@TILE@
        for (int s = 0; s < TILE; ++s) {
            const int t = (t0 + s < @END@) ? t0 + s : @END@ - 1;
@LOAD@
        }
        for (int s = 0; s < TILE; ++s) {
            const int t = t0 + s;
            if (t >= @END@) break;  // the same t for every lane of the warp
@STEP@
        }
    }
"""


def tiled_steps(tile: str, load: str, step: str, first: str = "0", end: str = "L") -> str:
    """Body text of a forward sweep over steps ``t = first .. end - 1`` in
    tiles of ``TILE`` steps: ``tile`` declares arrays of a tile's inputs,
    ``load`` fills entry ``s`` with step ``t``'s (the last step stands in
    past ``end``), then ``step`` runs step ``t = t0 + s``. Loading a tile
    before the steps' stores lets the loads overlap (one memory latency a
    tile instead of one a step).
    """
    return _fill(_TILED_STEPS, {"@TILE@": tile, "@LOAD@": load, "@STEP@": step,
                                "@FIRST@": first, "@END@": end})


SPAN = 256  # steps between stored checkpoints of the two-level kernels (ssd, gla), at most


def chunk_prologue(rows: str) -> str:
    """Body text mapping a thread of any kind's kernels to its chunk of
    spans. ``rows`` is the thread count of one chunk (whole warps). The
    input ``plan`` holds ``[SPAN, NC]``: the steps of a span (for ``ssd``
    and ``gla`` the steps between checkpoints) and how many chunks run side
    by side, 1 (every span, one after another) or one a span
    (``kernels/spans.py``); the template constant ``SIDE_BY_SIDE``
    (``spans.baked``) is 0 for the latter, whose ``SPAN`` and ``NC`` are then
    compile-time constants, as is ``chunk`` (0). Defines ``SPAN``, ``NC``,
    ``NS`` (the spans), ``idle`` (the thread is past the last chunk's rows
    and must return), ``chunk``, ``tid`` (the thread within its chunk) and
    the chunk's spans ``s_first .. s_end - 1`` and steps ``t_first .. t_end - 1``."""
    return f"""
    const int SPAN = SIDE_BY_SIDE ? plan[0] : {SPAN};
    const int NC = SIDE_BY_SIDE ? plan[1] : 1;
    const int NS = (L + SPAN - 1) / SPAN;
    const int SPC = (NS + NC - 1) / NC;  // spans a chunk
    const int ROWS = ({rows}) > 0 ? ({rows}) : 1;
    const bool idle = THREAD_ID >= NC * ROWS;  // past the last chunk (whole warps)
    // a compile-time 0 when one after another (25% of ssd's backward, H100)
    const int chunk = SIDE_BY_SIDE ? THREAD_ID / ROWS : 0;
    const int tid = SIDE_BY_SIDE ? THREAD_ID % ROWS : THREAD_ID;
    const int s_first = chunk * SPC;
    const int s_end = (SIDE_BY_SIDE && s_first + SPC < NS) ? s_first + SPC : NS;
    const int t_first = s_first * SPAN;
    const int t_end = (SIDE_BY_SIDE && s_end * SPAN < L) ? s_end * SPAN : L;
"""


_CHUNK_START = """
    if (idle || bh >= B * H) return;  // whole warps only
    float @S@[@W@];
    for (int @I@ = 0; @I@ < @W@; ++@I@) {
@INIT@
    }"""


def tiled_forward(state: str, index: str, width: str, init: str, tile: str, load: str,
                  step: str, checkpoint: str) -> str:
    """Body text of the forward of a two-level checkpointed kernel (after
    the prologue, which defines ``bh``, ``active`` and ``chunk_prologue``'s
    names).

    ``init`` sets ``state[index]`` (for ``index`` below ``width``) from the
    chunk's starting state (and, for chunk 0, stores it as checkpoint 0);
    then ``tiled_steps`` over the chunk's steps with ``tile`` and ``load``,
    where ``step`` advances the state by step ``t`` and writes ``y``, and
    ``checkpoint`` stores the state after every ``SPAN``-th step and the last.
    """
    start = _fill(_CHUNK_START, {"@INIT@": init, "@S@": state, "@I@": index, "@W@": width})
    return start + tiled_steps(tile, load, step + f"""
            if (active && ((t + 1) % SPAN == 0 || t == L - 1)) {{{checkpoint}
            }}""", first="t_first", end="t_end")


def chunk_ends(state: str, index: str, width: str, tile: str, load: str, update: str,
               store: str) -> str:
    """Body text of the first pass of chunks run side by side: each chunk's
    steps from a zero state (``update`` advances ``state`` by step ``t``,
    with ``tile`` and ``load`` as in ``tiled_steps``), then ``store`` writes
    the state the chunk ends in."""
    zero = f"        {state}[{index}] = 0.0f;"
    start = _fill(_CHUNK_START, {"@INIT@": zero, "@S@": state, "@I@": index, "@W@": width})
    return start + tiled_steps(tile, load, update, first="t_first", end="t_end") + store


def chunk_carries(width: str, tile: str, load: str, step: str, store: str) -> str:
    """Body text of the backward's first pass of chunks run side by side:
    the adjoint ``carry[width]`` (the cotangent of the state from later
    steps) from zero at each chunk's end back through its steps (``step``
    updates ``carry`` at step ``t``, with ``tile`` and ``load`` as in
    ``tiled_adjoint``), then ``store`` writes it."""
    return f"""
    if (idle || bh >= B * H) return;  // whole warps only
    float carry[{width}];
    for (int i = 0; i < {width}; ++i) carry[i] = 0.0f;
    const int t0 = t_first;
    const int t1 = t_end;""" + tiled_adjoint(tile, load, step) + store


def _fill(template: str, parts: dict) -> str:
    return re.sub("|".join(parts), lambda m: parts[m[0]], template)


_SPAN_BACKWARD = """
    float entering[SUBS * @W@];  // the state entering each SEG-step piece of the span
    float before[SEG * @W@];  // the state before each step t of the piece
    for (int s = s_end - 1; s >= s_first; --s) {
        float @S@[@W@];
@LOAD@
        for (int t = s * SPAN; t < s * SPAN + SPAN; ++t) {
            if ((t - s * SPAN) % SEG == 0) {
                for (int @I@ = 0; @I@ < @W@; ++@I@)
                    entering[((t - s * SPAN) / SEG) * @W@ + @I@] = @S@[@I@];
            }
            if (t >= L) continue;
@SPAN_STEP@
        }
        for (int piece = SPAN / SEG - 1; piece >= 0; --piece) {
            const int t0 = s * SPAN + piece * SEG;
            const int t1 = (t0 + SEG < L) ? t0 + SEG : L;
            for (int @I@ = 0; @I@ < @W@; ++@I@) @S@[@I@] = entering[piece * @W@ + @I@];
            for (int t = t0; t < t1; ++t) {
@PIECE_STEP@
            }
@ADJOINT@
        }
    }
"""


def span_backward(state: str, index: str, width: str, load: str,
                  step: Callable[[str], str], adjoint: str) -> str:
    """Body text of the backward sweep of a two-level checkpointed kernel
    over its chunk's spans.

    Checkpoints (one every ``SPAN`` steps, at most ``SUBS * SEG``) newest
    first: ``load`` fills the lane's state ``state[width]`` from checkpoint
    ``s``; the span is recomputed once by ``step("")``, keeping the state
    entering each ``SEG``-step piece; then piece by piece, newest first,
    ``step(save)`` recomputes the piece (``save`` keeps the state before
    step ``t`` in ``before[(t - t0) * width + index]``) and ``adjoint`` (a
    ``tiled_adjoint``) runs for ``t = t1 - 1`` down to ``t0``. ``step(save)``
    advances the state by step ``t``, looping over it with ``index`` and
    running ``save`` before each update.
    """
    save = f"before[(t - t0) * {width} + {index}] = {state}[{index}];"
    return _fill(_SPAN_BACKWARD, {"@LOAD@": load, "@SPAN_STEP@": step(""),
                                  "@PIECE_STEP@": step(save), "@ADJOINT@": adjoint,
                                  "@S@": state, "@I@": index, "@W@": width})


_TILED_ADJOINT = """
            for (int end = t1; end > t0; end -= TILE) {  // tiles of steps, newest first
                // the tile's inputs first: independent loads, one memory latency a tile
@TILE@
                for (int e = 0; e < TILE; ++e) {
                    const int t = (end - 1 - e >= t0) ? end - 1 - e : t0;
@LOAD@
                }
                for (int e = 0; e < TILE; ++e) {
                    const int t = end - 1 - e;
                    if (t < t0) break;  // the same t for every lane of the warp
@STEP@
                }
            }
"""


def tiled_adjoint(tile: str, load: str, step: str) -> str:
    """Body text of an adjoint sweep over steps ``t = t1 - 1`` down to ``t0``
    in tiles of ``TILE`` steps: ``tile`` declares arrays of a tile's inputs,
    ``load`` fills entry ``e`` with step ``t``'s (``t0`` stands in below it),
    then ``step`` runs the adjoint of step ``t``, entry ``e``. Loading a
    tile before the steps' stores lets the loads overlap (one memory latency
    a tile instead of one a step).
    """
    return _fill(_TILED_ADJOINT, {"@TILE@": tile, "@LOAD@": load, "@STEP@": step})


def selective_tile(entry: str, arrays: str = "BC") -> tuple[str, str]:
    """Body text declaring, and loading into tile entry ``entry``, the lane's
    ``NL`` values of ``B`` and ``C`` (``bs``, ``cs``; those named in
    ``arrays``) of the step whose row starts at input offset ``r``: the tile
    arrays of Mamba's selective scans (``s6``, ``ssd``) that
    ``selective_adjoint`` reads."""
    names = {"B": ("bs", "Bm"), "C": ("cs", "Cm")}
    declare = "".join(f"""
                float {names[a][0]}[TILE * NL];""" for a in arrays)
    load = "".join(f"""
                        {tile}[{entry} * NL + i] = static_cast<float>({source}[r + i * NSPLIT]);"""
                   for tile, source in (names[a] for a in arrays))
    return declare, f"""
                    for (int i = 0; i < NL; ++i) {{{load}
                    }}"""


def selective_adjoint(step: str, signal: str) -> str:
    """Body text of the adjoint of one state value of Mamba's selective scan
    (``s6``, ``ssd``): ``h = decay h + step B signal``, read out as ``C . h``.

    For value ``i`` of the lane (``n = i * NSPLIT + j`` of the row at input
    offset ``r``), given ``decay``, ``prev`` (the state before the step),
    ``carry[i]``, the output gradient ``g_out`` and the tile entry ``e``
    (``bs`` and ``cs`` hold ``B`` and ``C``, ``NL`` values an entry): defines
    ``bn``, ``cn``, ``ht`` (the state after the step) and ``gt`` (its
    cotangent), and keeps the lane's parts of the ``C`` and ``B`` gradients
    in ``dcs[i]`` and ``dbs[i]`` for ``selective_sums``.
    """
    return f"""
                const float bn = bs[e * NL + i];
                const float cn = cs[e * NL + i];
                const float ht = decay * prev + {step} * bn * {signal};
                const float gt = carry[i] + cn * g_out;
                dcs[i] = ht * g_out;
                dbs[i] = gt * {step} * {signal};"""


def selective_sums(rows: str) -> str:
    """Body text adding the step's ``dcs`` and ``dbs`` (from
    ``selective_adjoint``), summed over the warp's ``rows``, into ``dC`` and
    ``dB`` at offset ``r`` (``scatter_sums``)."""
    return scatter_sums(rows, "NL", "NSPLIT", (("dcs", "dC[r + {i} * NSPLIT]"),
                                               ("dbs", "dB[r + {i} * NSPLIT]")))


def scatter_sums(rows: str, width: str, split: str, sums) -> str:
    """Body text adding local arrays of ``width`` values a lane, summed over
    the lanes with the same index below ``split`` (the warp's ``rows``), into
    outputs: ``sums`` pairs each array with its output element, a format
    string of the value index ``{i}``. The arrays are overwritten.

    A reduce-scatter: over each lane bit from ``split`` up, while the lane
    holds an even count of values, it keeps one half (by that bit), adds its
    partner's part of that half and hands over the other (half the shuffles
    of a sum per value); an odd count is summed whole there and only the
    lanes with that bit clear write it. Every lane then adds the values it
    holds, so the warp's atomics are spread over all its lanes.
    """
    first_array = sums[0][0]
    halve = "".join(f"""
                                const float give_{a} = upper ? {a}[m] : {a}[m + half];
                                const float keep_{a} = upper ? {a}[m + half] : {a}[m];
                                {a}[m] = keep_{a} + SHUFFLE_XOR(give_{a}, o);"""
                    for a, _ in sums)
    whole = "".join(f"""
                                {a}[m] += SHUFFLE_XOR({a}[m], o);""" for a, _ in sums)
    add = "".join(f"""
                            ATOMIC_ADD(&{target.format(i="(first + m)")}, {a}[m]);"""
                  for a, target in sums)
    return f"""
                    {{  // sums over the warp's {rows} (lanes with the same index below {split})
                    int kept = {width};  // values the lane holds: {first_array}[0 .. kept - 1]
                    int first = 0;  // the value index of {first_array}[0]
                    bool writer = true;
                    for (int o = {split}; o < 32; o <<= 1) {{
                        if (kept % 2 == 0) {{
                            const int half = kept / 2;
                            const bool upper = (LANE_ID & o) != 0;
                            for (int m = 0; m < half; ++m) {{{halve}
                            }}
                            if (upper) first += half;
                            kept = half;
                        }} else {{
                            for (int m = 0; m < kept; ++m) {{{whole}
                            }}
                            if ((LANE_ID & o) != 0) writer = false;
                        }}
                    }}
                    if (writer) {{
                        for (int m = 0; m < kept; ++m) {{{add}
                        }}
                    }}
                    }}"""


def lanes(n: int) -> int:
    """``n`` rounded up to whole warps."""
    return -(-n // WARP) * WARP


def lane_split(n: int, widest: int = 8) -> int:
    """Lanes one state row (``n`` values) is split over: the largest power of
    two up to ``widest`` (at most 32) that divides ``n``. The row's sums are
    ``LANE_SUM``s over them."""
    return next(s for s in (32, 16, 8, 4, 2, 1) if s <= widest and n % s == 0)


# A backward kernel splits a state row over twice the forward's lanes (up to
# 16) when each lane would otherwise hold 8 values or more and the forward's
# split launches fewer than 2^17 threads (4096 warps): its sequential sweep
# then runs twice the warps with half the values a lane. H100, bf16,
# forward+backward (docs/kernels.md, "Design"): 10-19% faster for ssd with
# A [H, N] (B=3 H=12 P=64 N=64) and gla (B=3 H=12 K=V=64; B=4 H=16
# K=V=128); 14-16% slower at 4096 warps (gla B=8 H=16 K=V=128), no faster
# at 2 values a lane (ssd N=16).
WIDE_BACKWARD_BELOW = 2**17


def backward_split(n: int, threads: Callable[[int], int]) -> int:
    """Lanes a state row of ``n`` values is split over in a backward kernel,
    given the threads a split launches (``threads(split)``); see above."""
    split = lane_split(n)
    if n // split >= 8 and threads(split) < WIDE_BACKWARD_BELOW:
        return lane_split(n, widest=16)
    return split


def tile_steps(n: int) -> int:
    """Steps whose inputs a forward kernel (and the adjoint of ``ssd`` and
    ``gla``) loads at once, for a state row of ``n`` values split over
    ``lane_split(n)`` lanes: 8, fewer for wide lanes (2 at 16 values a lane;
    measured on an H200 for the forwards, docs/kernels.md)."""
    return max(1, min(8, 32 // (n // lane_split(n))))


def segments(length: int, seg: int) -> int:
    return -(-length // seg)


def checkpointed(forward: Callable, backward: Callable) -> Callable:
    """Differentiable ``run(*inputs, state) -> (y, final_state)``.

    ``forward(*inputs, state)`` returns ``(y, ckpt)`` with ``ckpt`` of shape
    ``[B, n_seg + 1, ...state]``: the state before every segment and, last,
    the final state. ``backward(dy, dfinal, ckpt, *inputs, state)`` returns
    one gradient per input and one for ``state``; ``dy`` comes in ``y``'s
    dtype (kernels read it as they read inputs, no float32 copy).
    """

    @mx.custom_function
    def op(*args):
        return forward(*args)

    @op.vjp
    def op_vjp(primals, cotangents, outputs):
        dy, dckpt = cotangents
        ckpt = outputs[1]
        grads = backward(dy.astype(outputs[0].dtype), dckpt[:, -1], ckpt, *primals)
        return tuple(g.astype(p.dtype) for g, p in zip(grads, primals))

    def run(*args):
        y, ckpt = op(*args)
        return y, ckpt[:, -1]

    return run


def common_unsupported(arrays, checkpoint_size: int = 0) -> str | None:
    """Reasons shared by every kernel to fall back; None if none applies."""
    if any(x.dtype == mx.float64 for x in arrays):
        return "float64 inputs have no GPU kernel"
    if max(max(x.size for x in arrays), checkpoint_size) >= 2**31:
        return "an input or the checkpoints are too large for 32-bit kernel indexing"
    return None


def _never(bound, arrays) -> None:
    return None


@dataclass(frozen=True)
class KernelPath:
    """What a kind registers as its kernel: when it applies and how to run it.

    ``unsupported`` says why the kernel cannot run (then even
    ``impl="kernel"`` refuses); ``slower`` says why ``impl="auto"`` should
    prefer the fallback although the kernel could run (measured crossovers).
    """

    run: Callable  # (*inputs, state) -> (y, final_state), batch flattened
    unsupported: Callable  # (bound, arrays, backend) -> reason, or None
    slower: Callable = _never  # (bound, arrays) -> reason, or None


def in_one_dtype(*arrays) -> tuple[mx.Dtype, tuple]:
    """``(T, arrays cast to T)``: the one dtype a kernel reads its inputs in
    (theirs when they agree, float32 when they are mixed)."""
    dtype = promote(x.dtype for x in arrays)
    return dtype, tuple(x.astype(dtype) for x in arrays)


LARGE_STATE = 512  # state elements per head above which the chunked fallback can train faster
LARGE_WORK = 12 * 10**7  # ... when the sweep makes at least this many state updates (all heads x L)
TILED_WORK = 18 * 10**6  # ... or this many, where the fallback's chunks run on matrix tiles
CROSSOVER_SEG = 32  # sequences of up to 4 x this many steps stay on the kernel, as measured


def large_state_crossover(dims: dict, rows: str, cols: str, seg: int, heads: int,
                          tiled: bool = False) -> str | None:
    """Why ``auto`` prefers the fallback for a matrix-state kind, or None.

    ``heads`` counts the independent states (batch x heads). The kernel's
    sweep makes ``state x heads x L`` updates, one step after another; the
    chunked fallback pays a fixed cost of some 80 launches (1.4-2 ms for a
    training step) and then runs on the tensor cores. Measured on an H100,
    bf16, forward+backward (docs/kernels.md, "Dispatch"): with one decay per
    head and more than ``LARGE_STATE`` elements per head, the kernel is as
    fast or faster up to 1.0e8 updates (gla B=3 and B=4 T=512 H=12 K=V=64,
    ssd B=3 L=512 H=12 N=64), and the fallback 1.4-3x faster from 1.3e8
    (gla B=1 T=512 H=16 K=V=128; ssd B=3 L=2048 H=4 N=128 and gla B=1
    T=4096 H=12 K=V=64, 2e8) up to 3.5x at 17e8 (the large ssd and gla
    shapes). Sequences of up to four segments stay on the kernel. With a
    decay per state channel the same rule holds: the kernel is faster at
    7.5e7 updates (gla B=3 T=512 H=12 K=V=64), the fallback 1.2-1.6x from
    1.3e8 (gla B=1 T=512 H=16 K=V=128, ssd with ``A [H, N]`` B=3 L=1024 H=12
    N=64) up to 2.8-3.1x (gla B=1 T=8192 and B=8 T=2048 H=16 K=V=128). States
    of 1024 and 2048 elements follow it too (ssd N=16 and 32, gla K=V=32 and
    K=32 V=64, per head or per channel): the fallback 1.3-2.2x faster from
    1.5e8 updates, 1.1-1.4x at 7.5e7, where the kernel still runs (ssd B=8
    L=1024 H=8 N=16, 6.7e7: level).

    ``tiled``: the fallback's chunks would run on matrix tiles (half-precision
    inputs, per-head decays; ``scalar_chunked.uses_tiles``). Then the bound is
    ``TILED_WORK``: H100, bf16, forward+backward, ``benchmarks/crossover.py``
    at 32d5f21, three rounds: the kernel faster in every round at 1.7e7
    updates (gla B=2 T=256 H=8 K=V=64: 0.90-0.99 against 1.02-1.09 ms), the
    fallback ahead at 1.9e7 (issue #3's ssd B=3 L=512 H=12 N=16: 0.87-1.30
    against 1.22-1.64 ms here, and faster in each of five rounds of
    ``bench.py --gpu``, 1.05-1.28 against 1.34-1.50 ms) and in every round
    from 2.5e7; below 1.7e7 the two are level. Earlier bounds
    and their runs: docs/kernels.md, "Dispatch".
    """
    size = dims[rows] * dims[cols]
    work = size * heads * dims["L"]
    bound = TILED_WORK if tiled else LARGE_WORK
    if size > LARGE_STATE and work >= bound and dims["L"] > 4 * seg:
        form = "chunked fallback on matrix tiles" if tiled else "chunked fallback"
        return (f"the {form} is faster for large states ({rows}*{cols}={size} "
                f"> {LARGE_STATE} per head) over many steps ({size * heads} state "
                f"elements x L={dims['L']} >= {bound:.1e} updates)")
    return None

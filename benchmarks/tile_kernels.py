"""Each tile kernel of the chunked form timed alone, then the whole step, on a GPU.

    python benchmarks/tile_kernels.py [--repeats 30]

At the large ``ssd`` shape (B=8 L=2048 H=32 P=64 N=128, bf16), the inputs
laid out as ``ssd``'s fallback hands them to ``kernels/chunked.py``, times
each tile kernel of a training step (``mx.eval`` and a synchronize around
each call, so each time includes one call's overhead) and then the
forward and forward+backward of ``impl="auto"``. docs/kernels.md "Where the
time goes" holds its tables.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlx.core as mx

import recurops
from recurops.fallback import scalar_chunked
from recurops.kernels import chunked

B, L, H, P, N = 8, 2048, 32, 64, 128
T = scalar_chunked.CHUNK["gpu"]


def timed(name: str, fn, repeats: int) -> None:
    mx.eval(fn())
    samples = []
    for _ in range(repeats):
        mx.synchronize()
        start = time.perf_counter()
        mx.eval(fn())
        mx.synchronize()
        samples.append(time.perf_counter() - start)
    print(f"{name:44s} {1e6 * statistics.median(samples):8.1f} us "
          f"(min {1e6 * min(samples):8.1f})", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    repeats = parser.parse_args(argv).repeats
    chunks = L // T
    mx.random.seed(0)
    x = mx.random.normal((B, L, H, P)).astype(mx.bfloat16)
    dt = (mx.random.uniform(shape=(B, L, H)) * 0.1).astype(mx.bfloat16)
    A = -mx.random.uniform(0.5, 1.5, (H,))
    Bp, Cp = (mx.random.normal((B, L, 1, N)).astype(mx.bfloat16) for _ in range(2))
    w = mx.random.normal((B, L, H, P)).astype(mx.bfloat16)

    # what _fallback_per_head and scalar_gate_chunked_scan hand the tiles (time first)
    q, k = (p.reshape(B, chunks, T, 1, N) for p in (Cp, Bp))
    v, dy = (a.reshape(B, chunks, T, H, P) for a in (x, w))
    dt_heads = mx.swapaxes(dt.astype(mx.float32), 1, 2)
    g = mx.exp(dt_heads * A[:, None]).reshape(B, H, chunks, T)
    vs = mx.contiguous(dt_heads).reshape(B, H, chunks, T)
    h0 = mx.zeros((B, H, N, P))
    cum, to_end = scalar_chunked._cumulative(g), scalar_chunked._to_end(g)
    before, _ = chunked.chunk_states(k, v, vs, g, h0, True)
    dcum = chunked.chunk_state_row_sums(q, dy, before, True)
    dend, _, da = chunked.chunk_cotangents(q, dy, g, h0, before, True)
    dw = vs * chunked.chunk_state_row_sums(k, v, dend, True)
    dqk = chunked.chunk_scores_grad(q, k, v, vs, dy, g, dend, dw, dcum, da, True)[2]
    mx.eval(x, dt, A, Bp, Cp, w, q, k, v, dy, g, vs, h0, cum, to_end, before, dcum, dend, da,
            dw, dqk)

    timed("chunk_states", lambda: chunked.chunk_states(k, v, vs, g, h0, True), repeats)
    timed("chunk_scores", lambda: chunked.chunk_scores(q, k, True), repeats)
    timed("chunk_outputs (with its chunk_scores)",
          lambda: chunked.chunk_outputs(q, k, v, vs, g, before, mx.bfloat16, True), repeats)
    timed("chunk_state_row_sums (dy . (q S))",
          lambda: chunked.chunk_state_row_sums(q, dy, before, True), repeats)
    timed("chunk_cotangents", lambda: chunked.chunk_cotangents(q, dy, g, h0, before, True),
          repeats)
    timed("chunk_scores_grad (with its chunk_scores)",
          lambda: chunked.chunk_scores_grad(q, k, v, vs, dy, g, dend, dw, dcum, da, True),
          repeats)
    timed("summed_state_products (dq)",
          lambda: chunked.summed_state_products(dy, cum, before, dqk, k, False, True), repeats)
    timed("summed_state_products (dk)",
          lambda: chunked.summed_state_products(v, to_end * vs, dend, dqk, q, True, True),
          repeats)

    inputs = (x, dt, A, Bp, Cp)
    grad = mx.grad(lambda *a: (recurops.scan("ssd", *a)[0] * w).astype(mx.float32).sum(),
                   argnums=tuple(range(len(inputs))))
    timed("forward, impl=auto", lambda: recurops.scan("ssd", *inputs)[0], repeats)
    timed("forward+backward, impl=auto", lambda: grad(*inputs), repeats)


if __name__ == "__main__":
    main()

"""``python -m recurops``: which backend MLX found, every kind checked and timed.

Runs each kind once through ``scan`` on the path ``"auto"`` picks, checks the
outputs, final state and gradients against the token-loop reference in
float64 on the CPU, and prints a short timing table.
"""

from __future__ import annotations

import sys
import time

import mlx.core as mx
import numpy as np

from . import KINDS, __version__, explain, scan
from ._api import gpu_backend


def _demo_inputs(kind: str, rng: np.random.Generator, batch=2, length=128):
    def normal(*shape):
        return rng.standard_normal((batch, length, *shape)).astype(np.float32)

    def unit(*shape):
        return rng.uniform(0.0, 1.0, (batch, length, *shape)).astype(np.float32)

    inputs = {
        "ssd": lambda: (normal(4, 32), unit(4) * 0.5, -rng.uniform(0.1, 1, 4).astype(np.float32),
                        normal(1, 16), normal(1, 16)),
        "gla": lambda: (normal(4, 32) / 6, normal(4, 32), normal(4, 48), unit(4, 32)),
        "rglru": lambda: (unit(256), normal(256)),
        "rotlru": lambda: (unit(64), np.cos(normal(64)), np.sin(normal(64)), normal(128)),
        "s6": lambda: (normal(64), unit(64) * 0.5,
                       -rng.uniform(0.1, 1, (64, 16)).astype(np.float32), normal(16), normal(16)),
    }[kind]()
    return tuple(mx.array(x) for x in inputs)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _check(kind, arrays):
    """Largest relative error of y, final state and gradients vs float64 reference."""
    def run(impl, args):
        def loss(*a):
            y, s = scan(kind, *a, impl=impl)
            return y.astype(mx.float32).sum() + s.astype(mx.float32).sum()
        y, s = scan(kind, *args, impl=impl)
        grads = mx.grad(loss, tuple(range(len(args))))(*args)
        return [np.array(t.astype(mx.float32)) for t in (y, s, *grads)]

    got = run("auto", arrays)
    with mx.stream(mx.cpu):
        exact = run("reference", tuple(x.astype(mx.float64) for x in arrays))
    return max(_rel(g, e) for g, e in zip(got, exact))


def _time(fn, repeats=5):
    fn()
    mx.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    mx.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


# Below this, MLX's CPU matmuls are the reference BLAS of its Linux wheel (about 3
# GFLOP/s on one core; an optimized BLAS gives 15-150).
SLOW_MATMUL_GFLOPS = 8.0


def _cpu_matmul_gflops(size: int = 384) -> float:
    """float32 GFLOP/s of one ``size``-cubed matmul on the CPU (best of three)."""
    a = mx.random.normal((size, size), stream=mx.cpu)
    mx.eval(a)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        mx.eval(mx.matmul(a, a, stream=mx.cpu))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main() -> int:
    backend = gpu_backend()
    print(f"recurops {__version__} on MLX {mx.__version__}: default device "
          f"{mx.default_device()}, kernels: {backend or 'none (no Metal/CUDA GPU)'}")
    if mx.default_device() == mx.cpu and sys.platform.startswith("linux"):
        gflops = _cpu_matmul_gflops()
        hint = (" (MLX's reference BLAS: preloading OpenBLAS makes `gla` and `ssd` about 4x"
                " faster, docs/benchmarks.md)" if gflops < SLOW_MATMUL_GFLOPS else "")
        print(f"CPU float32 matmul: {gflops:.1f} GFLOP/s{hint}")
    print(f"{'kind':8s} {'path':9s} {'max rel err':>12s} {'fwd ms':>8s} {'fwd+bwd ms':>11s}  shape")
    rng = np.random.default_rng(0)
    worst = 0.0
    for kind in KINDS:
        arrays = _demo_inputs(kind, rng)
        path = explain(kind, *arrays).path
        error = _check(kind, arrays)
        worst = max(worst, error)
        grad = mx.grad(lambda *a, k=kind: scan(k, *a)[0].sum(), tuple(range(len(arrays))))
        fwd_ms = _time(lambda k=kind, a=arrays: mx.eval(scan(k, *a)))
        train_ms = _time(lambda g=grad, a=arrays: mx.eval(g(*a)))
        shapes = " ".join("x".join(map(str, x.shape)) for x in arrays)
        print(f"{kind:8s} {path:9s} {error:12.2e} {fwd_ms:8.2f} {train_ms:11.2f}  {shapes}")
    ok = worst < 1e-4
    print("all kinds agree with the float64 reference" if ok else "MISMATCH against reference")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

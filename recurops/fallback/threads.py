"""Independent work split over CPU threads.

MLX's CPU backend runs each stream on its own thread, and its elementwise
ops (and the single-threaded BLAS of its Linux wheel) run on that thread:
work split along an axis of independent rows, one CPU stream per part, runs
in parallel. Autodiff runs each part's backward on the part's stream too.
Only when MLX's default device is the CPU; at most 8 streams, one per core
(``RECUROPS_CPU_THREADS`` overrides the count).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import mlx.core as mx

_STREAMS: list = []


def cpu_threads() -> int:
    env = os.environ.get("RECUROPS_CPU_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(os.cpu_count() or 1, 8))


def _cpu_streams(parts: int) -> list:
    while len(_STREAMS) < parts:
        _STREAMS.append(mx.new_stream(mx.cpu))
    return _STREAMS[:parts]


def split(fn: Callable, arrays: tuple, size: int, take: Callable, join: Callable) -> tuple:
    """``fn(*take(arrays, lo, hi))`` for the parts ``[lo, hi)`` of ``size``
    rows, each on its own CPU stream, and ``join(i, parts)`` of each output
    ``i``'s parts. Just ``fn(*arrays)`` off the CPU or for fewer than 2 rows."""
    parts = min(cpu_threads(), size) if mx.default_device() == mx.cpu else 1
    if parts <= 1:
        return fn(*arrays)
    bounds = [size * i // parts for i in range(parts + 1)]
    results = []
    for stream, lo, hi in zip(_cpu_streams(parts), bounds[:-1], bounds[1:]):
        with mx.stream(stream):
            results.append(fn(*take(arrays, lo, hi)))
    return tuple(join(i, list(outs)) for i, outs in enumerate(zip(*results)))


def split_rows(fn: Callable, arrays: tuple, size: int) -> tuple:
    """``fn(*arrays)`` with every array split along axis 0 (``size`` rows)."""
    return split(fn, arrays, size, lambda xs, lo, hi: tuple(x[lo:hi] for x in xs),
                 lambda _, outs: mx.concatenate(outs, axis=0))

"""What every compat wrapper shares: argument checks and the call into ``recurops.scan``."""

from __future__ import annotations

import mlx.core as mx

from .._api import scan

_NARROW = (mx.float16, mx.bfloat16)


def _widen(x):
    """mlx-recurrence returns float32 whatever the input dtype (float64 stays float64)."""
    return x.astype(mx.float32) if isinstance(x, mx.array) and x.dtype in _NARROW else x


def check_positive(value, name: str) -> None:
    """``seg`` / ``chunk_size`` are accepted for compatibility; recurops segments by itself."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def run(kind: str, *inputs, impl: str = "auto"):
    """``recurops.scan(kind, *inputs)`` with mlx-recurrence's output dtypes."""
    return scan(kind, *map(_widen, inputs), impl=impl)

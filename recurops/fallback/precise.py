"""Float32 matmuls that stay float32-accurate where MLX would use TF32.

On NVIDIA GPUs MLX runs float32 matmuls on tensor cores in TF32 (10-bit
mantissa) unless ``MLX_ENABLE_TF32=0`` was set before the first matmul: a
relative error near 3e-4, above the 1e-4 recurops promises for float32. There
``matmul`` splits each operand into a bfloat16-exact high part and a float32
remainder and sums three products (``hi@hi + hi@lo + lo@hi``): the high
products are exact in TF32 and the dropped ``lo@lo`` term is below 2^-16 of
the result, so the sum is float32-accurate at three times the matmul work.
Everywhere else ``matmul`` is plain ``a @ b``.
"""

from __future__ import annotations

import os

import mlx.core as mx


def _tf32_active() -> bool:
    if os.environ.get("MLX_ENABLE_TF32", "1") == "0":
        return False
    if mx.default_device().type != mx.DeviceType.gpu:
        return False
    cuda = getattr(mx, "cuda", None)
    return cuda is not None and cuda.is_available()


def _split(x: mx.array) -> tuple[mx.array, mx.array]:
    high = x.astype(mx.bfloat16).astype(mx.float32)
    return high, x - high


def matmul(a: mx.array, b: mx.array) -> mx.array:
    """``a @ b``, float32-accurate even where MLX would use TF32."""
    if a.dtype != mx.float32 or b.dtype != mx.float32 or not _tf32_active():
        return a @ b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    return a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)


def needs_exact_fp32(*inputs: mx.array) -> bool:
    """Whether results must be float32-accurate: only when no input is half
    precision. A bfloat16/float16 input carries its data at half precision,
    so the half-precision tolerance (which TF32 meets) holds for the call,
    also where a float32 parameter (Mamba's ``A``) promotes ``y`` to float32."""
    return not any(x.dtype in (mx.bfloat16, mx.float16) for x in inputs)

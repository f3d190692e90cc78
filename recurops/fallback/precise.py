"""Float32 matmuls that stay float32-accurate where MLX would use TF32.

On NVIDIA GPUs MLX runs float32 matmuls on tensor cores in TF32 (10-bit
mantissa) unless ``MLX_ENABLE_TF32=0`` was set before the first matmul: a
relative error near 3e-4, above the 1e-4 recurops promises for float32. There
``matmul`` splits each operand into a high part with a 10-bit mantissa (exact
in TF32) and the float32 remainder (below 2^-10 of it), and sums three
products (``hi@hi + hi@lo + lo@hi``): TF32 rounds the remainders to 2^-21 of
the operands and the dropped ``lo@lo`` term is below 2^-20, so the sum is as
accurate as a float32 matmul, at three times the matmul work. Everywhere else
``matmul`` is plain ``a @ b``. Both take an ``add`` that the matmul adds to
its product (``mx.addmm``: no separate pass over the result).
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


_TF32_MASK = 0xFFFFE000  # sign, exponent and the top 10 of float32's 23 mantissa bits


def split(x: mx.array) -> tuple[mx.array, mx.array]:
    """``(hi, lo)`` with ``hi + lo == x`` exactly and ``hi`` exact in TF32."""
    high = (x.view(mx.uint32) & _TF32_MASK).view(mx.float32)
    return high, x - high


def matmul(a: mx.array, b: mx.array, add: mx.array | None = None) -> mx.array:
    """``a @ b`` (``+ add``, fused into the matmul), float32-accurate even
    where MLX would use TF32."""
    if a.dtype != mx.float32 or b.dtype != mx.float32 or not _tf32_active():
        return plain_matmul(a, b, add)
    a_hi, a_lo = split(a)
    b_hi, b_lo = split(b)
    small = plain_matmul(a_lo, b_hi, plain_matmul(a_hi, b_lo, add))
    return mx.addmm(small, a_hi, b_hi)


def plain_matmul(a: mx.array, b: mx.array, add: mx.array | None = None) -> mx.array:
    """``a @ b + add`` in one matmul (``add`` broadcasts to the product)."""
    return a @ b if add is None else mx.addmm(add, a, b)


def needs_exact_fp32(*inputs: mx.array) -> bool:
    """Whether results must be float32-accurate: only when no input is half
    precision. A bfloat16/float16 input carries its data at half precision,
    so the half-precision tolerance (which TF32 meets) holds for the call,
    also where a float32 parameter (Mamba's ``A``) promotes ``y`` to float32."""
    return not any(x.dtype in (mx.bfloat16, mx.float16) for x in inputs)

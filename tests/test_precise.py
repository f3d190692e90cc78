"""``precise.matmul``'s split: exact, and float32-accurate under TF32.

CI has no TF32 hardware, so the tensor cores are emulated: each operand
rounded to TF32's 10-bit mantissa, products and sums in float64.
"""

import mlx.core as mx
import numpy as np

from recurops.fallback.precise import split


def _tf32(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest TF32 value (10 mantissa bits)."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32).astype(np.float64)


def test_split_is_exact_and_tf32_representable():
    rng = np.random.default_rng(0)
    x = mx.array((rng.standard_normal(4096) * np.exp(rng.normal(0, 10, 4096))).astype(np.float32))
    hi, lo = split(x)
    assert mx.all(hi + lo == x).item()
    assert np.array_equal(_tf32(np.array(hi)), np.array(hi, dtype=np.float64))
    assert float(mx.max(mx.abs(lo) / mx.abs(x))) < 2.0**-10


def test_three_split_products_are_float32_accurate_in_tf32():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((96, 80)).astype(np.float32)
    b = rng.standard_normal((80, 64)).astype(np.float32)
    (a_hi, a_lo), (b_hi, b_lo) = (tuple(np.array(p) for p in split(mx.array(m))) for m in (a, b))

    def tf32_matmul(x, y):
        return _tf32(x) @ _tf32(y)

    result = tf32_matmul(a_hi, b_hi) + tf32_matmul(a_hi, b_lo) + tf32_matmul(a_lo, b_hi)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    plain_tf32 = tf32_matmul(a, b)
    scale = np.abs(exact).max()
    assert np.abs(result - exact).max() / scale < 1e-6
    assert np.abs(plain_tf32 - exact).max() / scale > 1e-4  # what the split avoids

"""``precise.matmul``'s split: exact, and float32-accurate under TF32.

CI has no TF32 hardware, so the tensor cores are emulated: each operand
rounded to TF32's 10-bit mantissa, products and sums in float64. The test of
``add`` runs on MLX's default device (TF32 itself on an NVIDIA GPU).
"""

import mlx.core as mx
import numpy as np
import pytest

from recurops.fallback.precise import matmul, plain_matmul, split


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


@pytest.mark.parametrize("add_shape", [(3, 96, 64), (1, 96, 64), (96, 1)])
def test_matmul_adds_in_the_matmul(add_shape):
    """``matmul(a, b, add=c) == c + a @ b`` to float32 accuracy (``c``
    broadcast over batch or columns); ``plain_matmul`` to TF32 accuracy."""
    rng = np.random.default_rng(2)
    a, b, c = (rng.standard_normal(s).astype(np.float32)
               for s in ((3, 96, 80), (3, 80, 64), add_shape))
    exact = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    result = np.array(matmul(*(mx.array(x) for x in (a, b)), add=mx.array(c)), dtype=np.float64)
    assert result.shape == exact.shape
    assert np.abs(result - exact).max() / np.abs(exact).max() < 1e-5
    plain = np.array(plain_matmul(*(mx.array(x) for x in (a, b)), add=mx.array(c)), np.float64)
    assert np.abs(plain - exact).max() / np.abs(exact).max() < 2e-3  # TF32 on a GPU

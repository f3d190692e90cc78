"""Exact log-depth scans of first-order linear recurrences.

``linear_scan`` computes ``h[t] = a[t] * h[t-1] + b[t]`` (``h[-1] = 0``)
along one axis with an associative scan: O(L) work, O(log L) depth, no
division by cumulative products and no logarithm of ``a``, so gates that are
zero, negative or larger than one are handled exactly.

The elements may be real or complex numbers; complex numbers are carried as
``(real, imag)`` pairs of real arrays so the whole module runs on every MLX
backend and dtype. The backward pass is the same recurrence run in reverse
(the adjoint of ``h -> a h`` is ``h -> conj(a) h``), written as an
``mx.custom_function`` so the forward graph is never kept for autodiff.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx


def _slice(x: mx.array, axis: int, start=None, stop=None, step=None) -> mx.array:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop, step)
    return x[tuple(index)]


def associative_scan(combine: Callable, elems: tuple, axis: int) -> tuple:
    """Inclusive scan of ``elems`` (a tuple of equally shaped arrays).

    ``combine(earlier, later)`` must be associative. The odd-even recursion
    halves the length at every level, so the work is O(L) and the depth
    O(log L). Works for any length, including 1.
    """
    n = elems[0].shape[axis]
    if n < 2:
        return elems
    half = n // 2
    evens = tuple(_slice(e, axis, 0, 2 * half, 2) for e in elems)
    odds = tuple(_slice(e, axis, 1, 2 * half, 2) for e in elems)
    odd_prefix = associative_scan(combine, combine(evens, odds), axis)
    # prefix at an even position 2i (i >= 1) = prefix at 2i-1, then element 2i
    even_prefix = tuple(_slice(e, axis, 0, 1) for e in elems)
    count = (n - 1) // 2  # even positions after 0: none for n = 2, and no ops on empty arrays
    if count:
        rest = tuple(_slice(e, axis, 2, None, 2) for e in elems)
        even_tail = combine(tuple(_slice(p, axis, 0, count) for p in odd_prefix), rest)
        even_prefix = tuple(
            mx.concatenate([p, t], axis=axis) for p, t in zip(even_prefix, even_tail)
        )
    return tuple(_interleave(e, o, axis) for e, o in zip(even_prefix, odd_prefix))


def _interleave(evens: mx.array, odds: mx.array, axis: int) -> mx.array:
    """Merge ``evens`` (length m or m+1) and ``odds`` (length m) along ``axis``."""
    m = odds.shape[axis]
    paired = mx.stack([_slice(evens, axis, 0, m), odds], axis=axis + 1)
    shape = list(evens.shape)
    shape[axis] = 2 * m
    merged = paired.reshape(shape)
    if evens.shape[axis] > m:
        merged = mx.concatenate([merged, _slice(evens, axis, m)], axis=axis)
    return merged


# Real and complex numbers as tuples of arrays: (x,) or (re, im).


def _mul(x: tuple, y: tuple) -> tuple:
    if len(x) == 1:
        return (x[0] * y[0],)
    return (x[0] * y[0] - x[1] * y[1], x[0] * y[1] + x[1] * y[0])


def _add(x: tuple, y: tuple) -> tuple:
    return tuple(u + v for u, v in zip(x, y))


def _conj(x: tuple) -> tuple:
    return x if len(x) == 1 else (x[0], -x[1])


def _affine_combine(parts: int) -> Callable:
    """Composition of affine maps ``h -> a h + b`` given as (a..., b...)."""

    def combine(earlier, later):
        a1, b1 = earlier[:parts], earlier[parts:]
        a2, b2 = later[:parts], later[parts:]
        return _mul(a2, a1) + _add(_mul(a2, b1), b2)

    return combine


def _forward(a: tuple, b: tuple, axis: int) -> tuple:
    parts = len(a)
    out = associative_scan(_affine_combine(parts), a + b, axis)
    return out[parts:]


def _make_linear_scan(axis: int, parts: int) -> Callable:
    @mx.custom_function
    def scan(*ab):
        return _forward(ab[:parts], ab[parts:], axis)

    @scan.vjp
    def scan_vjp(primals, cotangents, outputs):
        a, h = primals[:parts], outputs
        # lam[t] = dh[t] + conj(a[t+1]) * lam[t+1], a reverse scan
        single = a[0].shape[axis] == 1  # then no shifted copies (no arrays of size 0)
        ones = tuple(mx.ones_like(_slice(x, axis, 0, 1)) for x in a)
        a_next = ones if single else tuple(
            mx.concatenate([_slice(x, axis, 1), o], axis=axis) for x, o in zip(a, ones)
        )
        rev = lambda x: _slice(x, axis, None, None, -1)  # noqa: E731
        lam = _forward(
            tuple(rev(x) for x in _conj(a_next)), tuple(rev(g) for g in cotangents), axis
        )
        lam = tuple(rev(x) for x in lam)
        zeros = tuple(mx.zeros_like(_slice(x, axis, 0, 1)) for x in h)
        h_prev = zeros if single else tuple(
            mx.concatenate([z, _slice(x, axis, 0, -1)], axis=axis) for z, x in zip(zeros, h)
        )
        da = _mul(lam, _conj(h_prev))
        return da + lam

    return scan


_SCANS: dict = {}


def linear_scan(a, b, h0=None, axis: int = 1):
    """``h[t] = a[t] * h[t-1] + b[t]`` along ``axis``, starting from ``h0``.

    ``a`` and ``b`` are arrays of one shape, or ``(re, im)`` pairs of arrays
    for complex coefficients; ``h0`` has the shape of one time slice with
    ``axis`` removed (or is None for zeros). Returns every ``h[t]`` in the
    form of ``b``. Exact for any real or complex ``a``.
    """
    complex_ = isinstance(a, tuple)
    a, b = (a, b) if complex_ else ((a,), (b,))
    axis = axis % b[0].ndim
    if h0 is not None:
        h0 = h0 if complex_ else (h0,)
        # fold the initial state into the first input: b[0] += a[0] * h0
        first = _add(_mul(tuple(_slice(x, axis, 0, 1) for x in a),
                          tuple(mx.expand_dims(x, axis) for x in h0)),
                     tuple(_slice(x, axis, 0, 1) for x in b))
        b = first if b[0].shape[axis] == 1 else tuple(
            mx.concatenate([f, _slice(x, axis, 1)], axis=axis) for f, x in zip(first, b)
        )
    key = (axis, len(a))
    if key not in _SCANS:
        _SCANS[key] = _make_linear_scan(*key)
    h = tuple(_SCANS[key](*a, *b))
    return h if complex_ else h[0]

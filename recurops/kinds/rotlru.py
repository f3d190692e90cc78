"""``"rotlru"`` — the rotational (complex-diagonal) LRU.

    u <- a * (cos * u - sin * w) + x_u
    w <- a * (sin * u + cos * w) + x_w ;  y = (u, w) interleaved

``x``, ``y`` and the state interleave the pairs: ``[..., 2p]`` is u and
``[..., 2p+1]`` is w. In complex numbers ``z <- a (cos + i sin) z + x``, which
the fallback runs as an exact associative scan over complex pairs.
"""

import mlx.core as mx

from .._kind import Input, Kind
from ..fallback.scan import linear_scan
from ..kernels.rotlru import KERNEL


def _pairs(x: mx.array) -> tuple[mx.array, mx.array]:
    return x[..., 0::2], x[..., 1::2]


def _interleave(u: mx.array, w: mx.array) -> mx.array:
    return mx.stack([u, w], axis=-1).reshape(*u.shape[:-1], 2 * u.shape[-1])


def reference(a, cos, sin, x, state):
    a, cos, sin, x = (t.astype(state.dtype) for t in (a, cos, sin, x))
    xu, xw = _pairs(x)
    u, w = _pairs(state)
    ys = []
    for t in range(a.shape[1]):
        u, w = (
            a[:, t] * (cos[:, t] * u - sin[:, t] * w) + xu[:, t],
            a[:, t] * (sin[:, t] * u + cos[:, t] * w) + xw[:, t],
        )
        ys.append(_interleave(u, w))
    return mx.stack(ys, axis=1), _interleave(u, w)


def fallback(a, cos, sin, x, state):
    a, cos, sin, x = (t.astype(state.dtype) for t in (a, cos, sin, x))
    u, w = linear_scan((a * cos, a * sin), _pairs(x), _pairs(state), axis=1)
    y = _interleave(u, w)
    return y, y[:, -1]


KIND = Kind(
    name="rotlru",
    summary="rotational (complex-diagonal) linear recurrent unit",
    inputs=(
        Input("a", ("... L P",), "magnitudes, any real number"),
        Input("cos", ("... L P",), "rotation cosines (need not be normalised)"),
        Input("sin", ("... L P",), "rotation sines"),
        Input("x", ("... L 2P",), "inputs, (u, w) pairs interleaved"),
    ),
    state="... 2P",
    output="... L 2P",
    domain="any real values",
    reference=reference,
    fallback=fallback,
    independent="P",
    kernel=KERNEL,
)

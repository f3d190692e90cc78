"""``"rglru"`` — the real-gated linear recurrent unit (Griffin, RecurrentGemma).

    h <- a * h + x ;  y = h

Any real ``a``. The fallback is an exact associative scan.
"""

import mlx.core as mx

from .._kind import Input, Kind
from ..fallback.scan import linear_scan
from ..kernels.rglru import KERNEL


def reference(a, x, state):
    a, x = a.astype(state.dtype), x.astype(state.dtype)
    h, ys = state, []
    for t in range(a.shape[1]):
        h = a[:, t] * h + x[:, t]
        ys.append(h)
    return mx.stack(ys, axis=1), h


def fallback(a, x, state):
    h = linear_scan(a.astype(state.dtype), x.astype(state.dtype), state, axis=1)
    return h, h[:, -1]


KIND = Kind(
    name="rglru",
    summary="real-gated linear recurrent unit",
    inputs=(Input("a", ("... L D",), "gates, any real number"), Input("x", ("... L D",), "inputs")),
    state="... D",
    output="... L D",
    domain="any real a",
    reference=reference,
    fallback=fallback,
    independent="D",
    kernel=KERNEL,
)

"""``"s6"`` — the Mamba-1 selective scan.

    h[d,n] <- exp(delta[d] * A[d,n]) * h[d,n] + delta[d] * B[n] * u[d]
    y[d]    = sum_n C[n] * h[d,n]

A diagonal recurrence over ``D x N`` channels; the fallback runs it as an
exact associative scan.
"""

import mlx.core as mx

from .._kind import Input, Kind
from ..fallback.scan import linear_scan
from ..kernels.s6 import KERNEL


def _prepare(u, delta, A, B, C, state):
    return tuple(t.astype(state.dtype) for t in (u, delta, A, B, C))


def reference(u, delta, A, B, C, state):
    u, delta, A, B, C = _prepare(u, delta, A, B, C, state)
    h, ys = state, []
    for t in range(u.shape[1]):
        d = delta[:, t, :, None]
        h = mx.exp(d * A) * h + (d * u[:, t, :, None]) * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return mx.stack(ys, axis=1), h


def fallback(u, delta, A, B, C, state):
    u, delta, A, B, C = _prepare(u, delta, A, B, C, state)
    d = delta[..., None]
    h = linear_scan(mx.exp(d * A), (d * u[..., None]) * B[:, :, None, :], state, axis=1)
    return (h * C[:, :, None, :]).sum(-1), h[:, -1]


KIND = Kind(
    name="s6",
    summary="Mamba-1 selective scan",
    inputs=(
        Input("u", ("... L D",), "inputs"),
        Input("delta", ("... L D",), "step sizes, >= 0"),
        Input("A", ("D N",), "decay rates, <= 0"),
        Input("B", ("... L N",), "input projections"),
        Input("C", ("... L N",), "output projections"),
    ),
    state="... D N",
    output="... L D",
    domain="delta >= 0, A <= 0",
    reference=reference,
    fallback=fallback,
    independent="D",
    kernel=KERNEL,
)

"""``"gla"`` — gated linear attention.

    S[i,j] <- g[i] * S[i,j] + k[i] * v[j]
    o[j]    = sum_i q[i] * S[i,j]            (after the update)

``g`` is one gate per head ``[..., L, H]`` or one per key channel
``[..., L, H, K]``, in linear space. The fallback is the chunked form.
"""

import mlx.core as mx

from .._kind import Input, Kind
from ..kernels.gla import KERNEL
from ..fallback.chunked import gated_chunked_scan


def _gates(g: mx.array) -> mx.array:
    """Per-head gates as [B, L, H, 1], per-channel ones unchanged."""
    return g[..., None] if g.ndim == 3 else g


def reference(q, k, v, g, state):
    q, k, v, g = (t.astype(state.dtype) for t in (q, k, v, g))
    g = _gates(g)
    S, outs = state, []
    for t in range(q.shape[1]):
        S = g[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append((q[:, t, :, :, None] * S).sum(-2))
    return mx.stack(outs, axis=1), S


def fallback(q, k, v, g, state):
    q, k, v, g = (t.astype(state.dtype) for t in (q, k, v, g))
    return gated_chunked_scan(q, k, v, g, state, chunk=64 if g.ndim == 3 else 16)


KIND = Kind(
    name="gla",
    summary="gated linear attention",
    inputs=(
        Input("q", ("... L H K",), "queries (used as given, no scale)"),
        Input("k", ("... L H K",), "keys"),
        Input("v", ("... L H V",), "values"),
        Input("g", ("... L H", "... L H K"), "gates in [0, 1], per head or per key channel"),
    ),
    state="... H K V",
    output="... L H V",
    domain="0 <= g <= 1",
    reference=reference,
    fallback=fallback,
    kernel=KERNEL,
)

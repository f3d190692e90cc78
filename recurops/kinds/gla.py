"""``"gla"`` — gated linear attention.

    S[i,j] <- g[i] * S[i,j] + k[i] * v[j]
    o[j]    = sum_i q[i] * S[i,j]            (after the update)

``g`` is one gate per head ``[..., L, H]`` or one per key channel
``[..., L, H, K]``, in linear space. The fallback is the chunked form.
"""

import mlx.core as mx

from .._kind import Input, Kind, state_dtype
from ..fallback.precise import needs_exact_fp32
from ..fallback.scalar_chunked import (
    channel_gate_chunked_scan,
    relayout,
    scalar_gate_chunked_scan,
)
from ..kernels.gla import KERNEL


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
    """The chunked forms; ``state`` None: zeros."""
    exact = needs_exact_fp32(q, k, v, g)
    out_dtype = mx.result_type(q, k, v, g)
    dtype = state_dtype((q, k, v, g))
    b, length, h, dk = q.shape
    dv = v.shape[-1]

    def heads_first(x):  # [B, L, H, X] -> [B*H, L, X] in the state's dtype, moved before the cast
        x = x.transpose(0, 2, 1, 3) if x.ndim == 4 else x.transpose(0, 2, 1)
        return x.reshape(b * h, length, -1).astype(dtype)

    def by_head(s, *heads):  # the state [B, H, K, V] as [B*H, *heads, K, V]
        return None if s is None else s.reshape(b * h, *heads, dk, dv)

    def heads_last(y):  # [B*H, L, V] -> [B, L, H, V] in the inputs' dtype
        return relayout(y.reshape(b, h, length, dv), (0, 2, 1, 3), out_dtype)

    if g.ndim == 4:  # one gate per key channel
        y, final = channel_gate_chunked_scan(
            heads_first(q), heads_first(k), heads_first(v), heads_first(g),
            by_head(state), exact_fp32=exact,
        )
        return heads_last(y), final.reshape(b, h, dk, dv)
    # per-head gates: the scalar-gate chunked form, heads folded into the batch

    y, final = scalar_gate_chunked_scan(  # q, k, v [B, L, H, X] as they come: tiles read them so
        q, k, v, heads_first(g).reshape(b * h, 1, length),
        by_head(state, 1), exact_fp32=exact, dtype=out_dtype, time_first=True,
    )
    return y, final.reshape(b, h, dk, dv)


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
    fallback_state_optional=True,
    kernel=KERNEL,
)

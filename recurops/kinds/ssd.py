"""``"ssd"`` — the Mamba-2 state-space-duality scan.

    h[h,p,n] <- exp(dt[h] * A[h,n]) * h[h,p,n] + dt[h] * B[g(h),n] * x[h,p]
    y[h,p]    = sum_n C[g(h),n] * h[h,p,n]

with ``g(h) = h // (H // G)``. The fallback maps it onto the gated matrix
recurrence (keys ``dt * B``, values ``x``, queries ``C``, gates
``exp(dt * A)``) and runs its chunked form.
"""

import mlx.core as mx

from .._kind import Input, Kind, state_dtype
from ..fallback.precise import needs_exact_fp32
from ..fallback.scalar_chunked import (
    channel_gate_chunked_scan,
    relayout,
    scalar_gate_chunked_scan,
)
from ..kernels.ssd import KERNEL


def _by_head(groups: mx.array, heads: int) -> mx.array:
    """[B, L, G, N] -> [B, H, L, N]: head h reads group h // (H // G)."""
    b, length, count, n = groups.shape
    by_group = mx.swapaxes(groups, 1, 2)[:, :, None]  # [B, G, 1, L, N]
    repeated = mx.broadcast_to(by_group, (b, count, heads // count, length, n))
    return repeated.reshape(b, heads, length, n)


def _prepare(x, dt, A, B, C, state):
    x, dt, A, B, C = (t.astype(state.dtype) for t in (x, dt, A, B, C))
    heads = x.shape[2]
    B, C = (mx.swapaxes(_by_head(t, heads), 1, 2) for t in (B, C))  # [B, L, H, N]
    return x, dt, (A if A.ndim == 2 else A[:, None]), B, C


def reference(x, dt, A, B, C, state):
    x, dt, A, B, C = _prepare(x, dt, A, B, C, state)
    h, ys = state, []
    for t in range(x.shape[1]):
        decay = mx.exp(dt[:, t, :, None] * A)  # [B, H, N]
        inject = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        h = decay[:, :, None, :] * h + inject
        ys.append((h * C[:, t, :, None, :]).sum(-1))
    return mx.stack(ys, axis=1), h


def fallback(x, dt, A, B, C, state):
    """The chunked forms; ``state`` None: zeros."""
    exact = needs_exact_fp32(x, dt, A, B, C)
    out_dtype = mx.result_type(x, dt, A, B, C)
    dtype = state_dtype((x, dt, A, B, C))
    if A.ndim == 1 or A.shape[-1] == 1:
        return _fallback_per_head(x, dt, A.reshape(-1), B, C, state, exact, out_dtype, dtype)
    # A [H, N]: one gate per head and state channel, the per-channel chunked
    # form. The inputs move heads-first before x's cast, and the keys and gates
    # are made heads-first: each takes one pass over [B, H, L, X].
    b, length, h, p = x.shape
    n = A.shape[-1]
    dt, A, B, C = (t.astype(dtype) for t in (dt, A, B, C))
    dt_heads = mx.swapaxes(dt, 1, 2)[..., None]  # [B, H, L, 1]

    def heads_first(t):  # [B, H, L, X] -> [B*H, L, X]
        return t.reshape(b * h, length, t.shape[-1])

    y, final = channel_gate_chunked_scan(
        heads_first(_by_head(C, h)), heads_first(dt_heads * _by_head(B, h)),
        heads_first(mx.swapaxes(x, 1, 2)).astype(dtype),
        heads_first(mx.exp(dt_heads * A[:, None])),
        None if state is None else mx.swapaxes(state, -1, -2).reshape(b * h, n, p),
        exact_fp32=exact,
    )
    y = relayout(y.reshape(b, h, length, p), (0, 2, 1, 3), out_dtype)
    return y, mx.swapaxes(final.reshape(b, h, n, p), -1, -2)


def _fallback_per_head(x, dt, A, B, C, state, exact, out_dtype, dtype):
    """A [H]: scalar gates per head; the R = H // G heads of a group share B and C."""
    dt, A = (t.astype(dtype) for t in (dt, A))
    b, length, h, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    r = h // groups
    dt_heads = mx.swapaxes(dt, 1, 2)  # [B, H, L]
    gate = mx.exp(dt_heads * A[:, None])
    y, final = scalar_gate_chunked_scan(  # values dt * x; C, B, x [B, L, X, Y] as they come
        C, B, x, gate.reshape(b * groups, r, length),
        None if state is None else mx.swapaxes(state, -1, -2).reshape(b * groups, r, n, p),
        exact_fp32=exact,
        dtype=out_dtype, v_scale=dt_heads.reshape(b * groups, r, length), time_first=True,
    )
    return y, mx.swapaxes(final.reshape(b, h, n, p), -1, -2)


KIND = Kind(
    name="ssd",
    summary="Mamba-2 state-space duality scan",
    inputs=(
        Input("x", ("... L H P",), "token inputs per head"),
        Input("dt", ("... L H",), "step sizes, >= 0"),
        Input("A", ("H", "H N"), "decay rates, <= 0, per head or per head and state channel"),
        Input("B", ("... L G N",), "input projections per group"),
        Input("C", ("... L G N",), "output projections per group"),
    ),
    state="... H P N",
    output="... L H P",
    divides=(("G", "H"),),
    domain="dt >= 0, A <= 0",
    reference=reference,
    fallback=fallback,
    fallback_state_optional=True,
    kernel=KERNEL,
)

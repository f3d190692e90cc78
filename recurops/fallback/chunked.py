"""Chunked (matmul) form of a gated matrix-state recurrence.

    S[t] = diag(g[t]) S[t-1] + k[t] v[t]^T        S: [K, V] per head
    o[t] = S[t]^T q[t]

The sequence is cut into chunks of ``T`` steps. Inside a chunk the outputs
are a masked, decay-weighted attention ``(q k^T * D) v`` with

    D[t, s] = prod_{s < r <= t} g[r]     (0 where s > t)

built by a cumulative product over a masked copy of the gates: no division
by cumulative products and no logarithm, so gates of exactly 0 and 1 are
exact and their gradients finite. Between chunks the states follow the same
recurrence one chunk at a time, ``S_c = a_c S_{c-1} + U_c``, run as an
associative scan. Work is O(L T (K + V) + L K V) per head, all matmuls
except the scan.
"""

from __future__ import annotations

import mlx.core as mx

from .scan import linear_scan


def _chunk_decays(g: mx.array) -> tuple[mx.array, mx.array]:
    """``g [..., T, Kg]`` -> (D [..., T(t), T(s), Kg], cumulative gate [..., T, Kg])."""
    steps = g.shape[-2]
    idx = mx.arange(steps)
    later = idx[None, :] > idx[:, None]  # [s, r]: r > s
    # masked[s, r] = g[r] for r > s, else 1; its cumprod over r is
    # prod_{s < r <= t} g[r] at column t (and 1 for t <= s).
    masked = mx.where(later[..., None], mx.expand_dims(g, -3), 1.0)
    from_s = mx.cumprod(masked, axis=-2)  # [..., s, t, Kg]
    decay = mx.swapaxes(from_s, -3, -2) * (~later)[..., None]  # [..., t, s, Kg], s <= t
    return decay, mx.cumprod(g, axis=-2)


def gated_chunked_scan(q, k, v, g, h0, chunk: int = 64):
    """Chunked evaluation of the gated matrix recurrence above.

    q, k: [B, L, H, K]; v: [B, L, H, V]; g: [B, L, H] (per head) or
    [B, L, H, K] (per key channel), linear-space gates; h0: [B, H, K, V].
    Returns o [B, L, H, V] and the final state [B, H, K, V]. Float32/64 in.
    """
    batch, length, heads, dk = q.shape
    dv = v.shape[-1]
    per_head = g.ndim == 3
    if per_head:
        g = g[..., None]
    steps = min(chunk, length)
    pad = -length % steps
    if pad:
        widths = [(0, 0), (0, pad), (0, 0), (0, 0)]
        q, k, v = (mx.pad(x, widths) for x in (q, k, v))
        g = mx.pad(g, widths, constant_values=1.0)
    chunks = (length + pad) // steps

    def split(x):  # [B, Lp, H, X] -> [B, H, C, T, X]
        return x.reshape(batch, chunks, steps, heads, x.shape[-1]).transpose(0, 3, 1, 2, 4)

    q, k, v, g = split(q), split(k), split(v), split(g)
    decay, cum = _chunk_decays(g)  # [B,H,C,T,T,Kg], [B,H,C,T,Kg]

    if per_head:
        scores = (q @ mx.swapaxes(k, -1, -2)) * decay[..., 0]
    else:
        scores = (q[..., :, None, :] * decay * k[..., None, :, :]).sum(-1)
    out = scores @ v

    to_end = decay[..., -1, :, :]  # [B,H,C,T(s),Kg]: decay from s to the chunk's end
    local = mx.swapaxes(k * to_end, -1, -2) @ v  # [B,H,C,K,V]
    chunk_gate = mx.broadcast_to(cum[..., -1, :, None], local.shape)
    states = linear_scan(chunk_gate, local, h0, axis=2)  # state after each chunk
    before = mx.concatenate([h0[:, :, None], states[:, :, :-1]], axis=2)
    out = out + (q * cum) @ before

    out = out.transpose(0, 2, 3, 1, 4).reshape(batch, chunks * steps, heads, dv)
    return out[:, :length], states[:, :, -1]

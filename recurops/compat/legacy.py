"""mlx-recurrence's ``legacy`` (v0.1) functions on ``recurops.scan``.

    selective_scan_metal(u, delta, B_in, C_in, A_neg)                 -> y [B, L, D]
    selective_scan_chunked(u, delta, B_in, C_in, A_neg, chunk_size=32) -> y [B, L, D]
    gla_scan_metal(q, k, v, gates)                                     -> y [B, L, H, Dh]
    gla_scan_chunked(q, k, v, gates, chunk_size=32)                    -> y [B, L, H, Dh]

The selective scan is recurops' ``"s6"`` kind (``u``/``delta [B, L, D]``,
``B_in``/``C_in [B, L, N]``, ``A_neg [D, N]``); the GLA pair is ``"gla"``. The
``_metal`` and ``_chunked`` variants compute the same thing and here run the
same ``scan``: on the fused kernel where one runs, else on the exact
vectorized fallback, on any platform. ``chunk_size`` is accepted and ignored.
The original ``_chunked`` functions divided by running decay products and
lost accuracy (or overflowed) for long or strongly decaying sequences;
these do not.
"""

from __future__ import annotations

from ._common import check_positive, run


def selective_scan_metal(u, delta, B_in, C_in, A_neg):
    """Mamba-1 selective scan; returns ``y [B, L, D]``."""
    return run("s6", u, delta, A_neg, B_in, C_in)[0]


def selective_scan_chunked(u, delta, B_in, C_in, A_neg, chunk_size=32):
    """Mamba-1 selective scan (``chunk_size`` accepted and ignored); returns ``y``."""
    check_positive(chunk_size, "chunk_size")
    return run("s6", u, delta, A_neg, B_in, C_in)[0]


def gla_scan_metal(q, k, v, gates):
    """Gated linear attention; returns ``y [B, L, H, Dh]``."""
    return run("gla", q, k, v, gates)[0]


def gla_scan_chunked(q, k, v, gates, chunk_size=32):
    """Gated linear attention (``chunk_size`` accepted and ignored); returns ``y``."""
    check_positive(chunk_size, "chunk_size")
    return run("gla", q, k, v, gates)[0]

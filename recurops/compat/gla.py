"""mlx-recurrence's ``gla`` module on ``recurops.scan("gla", ...)``.

    gla_scan(q, k, v, gates, seg=32)             -> y            [B, L, H, Dh]
    gla_scan_with_state(q, k, v, gates, seg=32)  -> (y, state)   state [B, H, Dh, Dh]
    gla_scan_reference(q, k, v, gates)           -> y            (token loop)

``q``/``k``/``v [B, L, H, Dh]``, ``gates [B, L, H]`` in linear space. Any
``L``, any ``Dh`` (``k`` and ``v`` may even differ in width, and per-channel
gates ``[B, L, H, Dh]`` work too); ``seg`` is accepted and ignored. The final
state ``[B, H, K, V]`` is recurops' ``"gla"`` state layout.
"""

from __future__ import annotations

from ._chassis import DEFAULT_SEG
from ._common import check_positive, run


def gla_scan_with_state(q, k, v, gates, seg=DEFAULT_SEG):
    """Gated linear attention; returns ``(y [B, L, H, Dh], final_state [B, H, Dh, Dh])``."""
    check_positive(seg, "seg")
    return run("gla", q, k, v, gates)


def gla_scan(q, k, v, gates, seg=DEFAULT_SEG):
    """Gated linear attention; returns ``y [B, L, H, Dh]``."""
    return gla_scan_with_state(q, k, v, gates, seg)[0]


def gla_scan_reference(q, k, v, gates):
    """The plain token loop (``impl="reference"``); returns ``y``. Differentiable."""
    return run("gla", q, k, v, gates, impl="reference")[0]

"""mlx-recurrence's ``rglru`` module on ``recurops.scan("rglru", ...)``.

    rglru_scan(a, x, seg=32)             -> y            [B, L, D]
    rglru_scan_with_state(a, x, seg=32)  -> (y, state)   state [B, D]
    rglru_scan_reference(a, x)           -> y            (token loop)

``h_t = a_t * h_{t-1} + x_t``, ``y_t = h_t``. Any ``L``, any ``D``; ``seg`` is
accepted and ignored.
"""

from __future__ import annotations

from ._chassis import DEFAULT_SEG
from ._common import check_positive, run


def rglru_scan_with_state(a, x, seg=DEFAULT_SEG):
    """RG-LRU scan; returns ``(y [B, L, D], final_state [B, D])``."""
    check_positive(seg, "seg")
    return run("rglru", a, x)


def rglru_scan(a, x, seg=DEFAULT_SEG):
    """RG-LRU scan; returns ``y [B, L, D]``."""
    return rglru_scan_with_state(a, x, seg)[0]


def rglru_scan_reference(a, x):
    """The plain token loop (``impl="reference"``); returns ``y``. Differentiable."""
    return run("rglru", a, x, impl="reference")[0]

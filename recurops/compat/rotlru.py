"""mlx-recurrence's ``rotlru`` module on ``recurops.scan("rotlru", ...)``.

    rotlru_scan(a, cs, sn, x, seg=32)             -> y            [B, L, D]
    rotlru_scan_with_state(a, cs, sn, x, seg=32)  -> (y, state)   state [B, D]
    rotlru_scan_reference(a, cs, sn, x)           -> y            (token loop)

``a``/``cs``/``sn [B, L, D/2]`` per channel pair, ``x [B, L, D]`` with the
``(u, w)`` pairs interleaved; the state interleaves them the same way. Any
``L``, any even ``D``; ``seg`` is accepted and ignored.
"""

from __future__ import annotations

from ._chassis import DEFAULT_SEG
from ._common import check_positive, run


def rotlru_scan_with_state(a, cs, sn, x, seg=DEFAULT_SEG):
    """Rotational LRU scan; returns ``(y [B, L, D], final_state [B, D])``."""
    check_positive(seg, "seg")
    return run("rotlru", a, cs, sn, x)


def rotlru_scan(a, cs, sn, x, seg=DEFAULT_SEG):
    """Rotational LRU scan; returns ``y [B, L, D]``."""
    return rotlru_scan_with_state(a, cs, sn, x, seg)[0]


def rotlru_scan_reference(a, cs, sn, x):
    """The plain token loop (``impl="reference"``); returns ``y``. Differentiable."""
    return run("rotlru", a, cs, sn, x, impl="reference")[0]

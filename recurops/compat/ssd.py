"""mlx-recurrence's ``ssd`` module on ``recurops.scan("ssd", ...)``.

    ssd_scan(u, delta, B, C, A_neg, seg=32)             -> y            [B, L, H, Dh]
    ssd_scan_with_state(u, delta, B, C, A_neg, seg=32)  -> (y, state)   state [B, H, Dh, N]
    ssd_scan_reference(u, delta, B, C, A_neg)           -> y            (token loop)

``u [B, L, H, Dh]``, ``delta [B, L, H]``, ``B``/``C [B, L, H, N]`` and
``A_neg [H, N]`` (<= 0). Note the argument order: recurops' own order is
``scan("ssd", u, delta, A_neg, B, C)``. Any ``L``, any ``Dh``; ``seg`` is
accepted and ignored (recurops chooses its own segmentation). The final
state is mlx-recurrence's conceptual ``[B, H, Dh, N]``, which is recurops'
``"ssd"`` state layout, so it can be passed on as ``state=``.
"""

from __future__ import annotations

from ._chassis import DEFAULT_SEG
from ._common import check_positive, run


def ssd_scan_with_state(u, delta, B, C, A_neg, seg=DEFAULT_SEG):
    """Mamba-2 SSD scan; returns ``(y [B, L, H, Dh], final_state [B, H, Dh, N])``."""
    check_positive(seg, "seg")
    return run("ssd", u, delta, A_neg, B, C)


def ssd_scan(u, delta, B, C, A_neg, seg=DEFAULT_SEG):
    """Mamba-2 SSD scan; returns ``y [B, L, H, Dh]``."""
    return ssd_scan_with_state(u, delta, B, C, A_neg, seg)[0]


def ssd_scan_reference(u, delta, B, C, A_neg):
    """The plain token loop (``impl="reference"``); returns ``y``. Differentiable."""
    return run("ssd", u, delta, A_neg, B, C, impl="reference")[0]

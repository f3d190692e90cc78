"""``recurops.compat`` — the mlx-recurrence 0.3.0 API, built on ``recurops.scan``.

Replace ``from mlx_recurrence import X`` with ``from recurops.compat import X``
(submodules too: ``recurops.compat.ssd``, ``.gla``, ``.rglru``, ``.rotlru``,
``.legacy``). Same names, same argument order, same results, final states in
the same layouts; and none of that package's limits: any sequence length
``L`` (not only multiples of ``seg``), any lane dimension (not only multiples
of 32), any platform (the vectorized MLX fallback where no GPU kernel runs).

Differences, all in the caller's favour:

- ``seg`` / ``chunk_size`` are accepted (and must be positive integers) but
  recurops chooses its own segmentation.
- Gradients flow through the ``final_state`` of the ``*_with_state``
  functions too (mlx-recurrence's kernels dropped that cotangent).
- Leading batch dimensions may be any number, not exactly one; SSD ``B``/``C``
  may be per group (``[B, L, G, N]``) as well as per head.

New code should call ``recurops.scan`` directly: docs/migration.md maps every
name here to its ``scan`` call.
"""

from . import legacy
from ._chassis import DEFAULT_SEG, check_segment_shape, get_or_build_kernel, parity_check
from .gla import gla_scan, gla_scan_reference, gla_scan_with_state
from .legacy import gla_scan_chunked, gla_scan_metal, selective_scan_chunked, selective_scan_metal
from .rglru import rglru_scan, rglru_scan_reference, rglru_scan_with_state
from .rotlru import rotlru_scan, rotlru_scan_reference, rotlru_scan_with_state
from .ssd import ssd_scan, ssd_scan_reference, ssd_scan_with_state

__all__ = [
    "ssd_scan",
    "ssd_scan_with_state",
    "ssd_scan_reference",
    "gla_scan",
    "gla_scan_with_state",
    "gla_scan_reference",
    "rglru_scan",
    "rglru_scan_with_state",
    "rglru_scan_reference",
    "rotlru_scan",
    "rotlru_scan_with_state",
    "rotlru_scan_reference",
    "DEFAULT_SEG",
    "get_or_build_kernel",
    "check_segment_shape",
    "parity_check",
    "legacy",
    "selective_scan_metal",
    "selective_scan_chunked",
    "gla_scan_metal",
    "gla_scan_chunked",
]

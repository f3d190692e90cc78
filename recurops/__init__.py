"""recurops — linear-recurrence ops for MLX.

    y, final_state = recurops.scan(kind, *inputs, state=None)

Kinds: ``"ssd"`` (Mamba-2), ``"gla"`` (gated linear attention), ``"rglru"``
(Griffin / RecurrentGemma), ``"rotlru"`` (rotational LRU) and ``"s6"``
(Mamba-1). Fused GPU kernels where MLX runs on a Metal or CUDA GPU, an exact
vectorized MLX fallback everywhere else.
"""

from ._api import Explanation, explain, scan
from .kinds import KINDS

__version__ = "0.1.0"
__all__ = ["KINDS", "Explanation", "explain", "scan", "__version__"]

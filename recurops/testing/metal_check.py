"""Type-check Metal kernel sources without a Mac.

:func:`check_metal` compiles a full Metal source (as ``mx.fast.metal_kernel``
generates it, see :func:`recurops.testing.wrap.metal`) with the system C++
compiler in syntax-only mode, as C++14 (the base of the Metal Shading
Language 3), with no system headers: only a stub of the Metal standard library
(``recurops.testing._stubs``). That catches what a CUDA-only run cannot: a
misspelt Metal name or keyword, a CUDA-only name in the shared body
(``__shfl_xor_sync``, ``expf``, ``threadIdx``), a call no Metal overload takes
without a cast (``metal::exp`` of an ``int``, a ``uint3`` used as an ``int``),
and C++ that Metal forbids (``double``, ``new``, exceptions, ``goto``, ...).

It does not run Apple's compiler: address spaces are accepted but not
type-checked, and the stub declares only what the recurops kernels use.
"""

from __future__ import annotations

from .executor import BuildError, syntax_check


class MetalSourceError(ValueError):
    """A Metal source failed the check; the message holds the compiler's diagnostics."""


def check_metal(text: str) -> None:
    """Raise :class:`MetalSourceError` unless ``text`` type-checks against the Metal stub."""
    try:
        syntax_check(text, std="c++14", extra=("-pedantic-errors",))
    except BuildError as e:
        raise MetalSourceError(str(e)) from None

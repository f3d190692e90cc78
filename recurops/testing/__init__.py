"""Test and debugging tools: run the library's GPU kernel sources on the CPU.

Not imported by ``recurops``; nothing here is needed to use the library.

* :func:`simulate` — inside ``with simulate("metal")`` (or ``"cuda"``),
  ``recurops.scan(..., impl="kernel")`` and its gradients run the real kernel
  sources through the CPU executor.
* :class:`Kernel` — the executor, with the calling convention of
  ``mx.fast.metal_kernel`` / ``mx.fast.cuda_kernel`` on NumPy arrays.
* :func:`check_metal` — type-check a Metal source against a stub of the Metal
  standard library.

See docs/kernel-simulation.md for what this does and does not prove.
"""

from .executor import BuildError, Kernel, SimulationError, available
from .metal_check import MetalSourceError, check_metal
from .simulate import Launch, simulate

__all__ = ["BuildError", "Kernel", "Launch", "MetalSourceError", "SimulationError",
           "available", "check_metal", "simulate"]

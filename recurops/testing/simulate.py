"""Run ``recurops.scan(..., impl="kernel")`` on the CPU through the kernel simulator.

Inside ``with simulate("cuda")`` or ``with simulate("metal")``:

* the dispatcher sees a GPU of that backend (``gpu_backend()``), so
  ``impl="kernel"`` and ``impl="auto"`` take the kernel path for every input
  the kernel accepts;
* ``recurops.kernels.chassis.build`` returns simulated kernels: each launch
  renders the kernel body in that dialect, wraps it as MLX would, compiles it
  with the system C++ compiler (cached) and runs it on NumPy copies of the
  buffers (:class:`recurops.testing.Kernel`). Forward and backward kernels
  both go through it, so ``mx.grad`` of a kernel-path scan runs the real
  backward kernel source.

``execute=False`` records the launches (with their full wrapped source) and
returns zero outputs without compiling: the Metal check uses it to collect
every source a set of calls would compile. The patching is global and not
thread-safe; it is for tests and debugging.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import executor, wrap


@dataclass
class Launch:
    """One kernel launch seen by :func:`simulate`."""

    name: str  # the chassis Source name, e.g. "ssd_bwd"
    wrapped: wrap.Wrapped  # what MLX would compile for it
    grid: tuple
    threadgroup: tuple


class Simulation:
    """Handle returned by :func:`simulate`: the dialect and the launches so far."""

    def __init__(self, dialect: str, execute: bool):
        self.dialect = dialect
        self.execute = execute
        self.launches: list[Launch] = []
        self._kernels: dict = {}

    def kernel(self, source):
        if source.name not in self._kernels:
            from recurops.kernels import chassis

            header, body = chassis.render(source.body, self.dialect)
            self._kernels[source.name] = _SimulatedKernel(
                self, source.name, executor.Kernel(
                    f"recurops_{source.name}", source.inputs, source.outputs, body, header,
                    self.dialect))
        return self._kernels[source.name]


class _SimulatedKernel:
    """Stands in for the object ``mx.fast.*_kernel`` returns: MLX arrays in and out."""

    def __init__(self, sim: Simulation, name: str, kernel: executor.Kernel):
        self.sim = sim
        self.name = name
        self.kernel = kernel

    def __call__(self, *, inputs, template, grid, threadgroup, output_shapes, output_dtypes,
                 init_value=None, **unused):
        import mlx.core as mx

        wrapped = self.kernel.wrapped(inputs, output_dtypes, template)
        self.sim.launches.append(Launch(self.name, wrapped, tuple(grid), tuple(threadgroup)))
        if not self.sim.execute:
            return [mx.zeros(s, d) for s, d in zip(output_shapes, output_dtypes)]
        outs = self.kernel(inputs=list(inputs), template=template, grid=grid,
                           threadgroup=threadgroup, output_shapes=output_shapes,
                           output_dtypes=output_dtypes, init_value=init_value)
        return [mx.array(np.asarray(o)).astype(d) for o, d in zip(outs, output_dtypes)]


@contextmanager
def simulate(dialect: str = "metal", *, execute: bool = True):
    """Patch recurops so its kernel path runs the ``dialect`` kernel sources on the CPU."""
    if dialect not in ("metal", "cuda"):
        raise ValueError(f"dialect must be 'metal' or 'cuda', got {dialect!r}")
    if execute:
        why = executor.available()
        if why is not None:
            raise RuntimeError(f"the kernel simulator cannot run here: {why}")
    from recurops import _api
    from recurops.kernels import chassis

    sim = Simulation(dialect, execute)
    saved = (chassis.build, chassis.backend, _api.gpu_backend)
    chassis.build = lambda source, backend: sim.kernel(source)
    chassis.backend = lambda: dialect
    _api.gpu_backend = lambda: dialect
    try:
        yield sim
    finally:
        chassis.build, chassis.backend, _api.gpu_backend = saved

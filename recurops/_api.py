"""The public entry points: ``scan`` and ``explain``, and the dispatch between paths."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import mlx.core as mx

from . import _interop
from ._kind import STEP_FORM_STEPS, Bound, Kind, bind, channel_slicing, promote, state_dtype
from .fallback import threads
from .kinds import KINDS

PATHS = ("auto", "kernel", "fallback", "reference")


class Explanation(NamedTuple):
    """The path ``scan(..., impl="auto")`` takes and why.

    Attributes:
        path: ``"kernel"`` (fused GPU kernel) or ``"fallback"`` (vectorized MLX).
        reason: one sentence: the GPU backend used, or why the kernel does not
            run (no GPU, float64, a shape it does not take, or a measured
            crossover where the fallback is faster).
    """

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def get_kind(name: str) -> Kind:
    """The registered kind called ``name``; ValueError naming the kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown kind {name!r}; the kinds are {', '.join(map(repr, KINDS))}"
        ) from None


def _collect(kind: Kind, inputs: tuple, named: dict) -> tuple:
    """Positional plus keyword inputs in declared order; TypeError if the count is off.

    Whether each one is an array is checked by ``_interop`` (any array-API library).
    """
    names = kind.input_names
    unknown = set(named) - set(names)
    if unknown:
        raise TypeError(
            f"{kind.name}: unexpected keyword input(s) {sorted(unknown)}; "
            f"expected inputs in order: {', '.join(names)}"
        )
    given = list(inputs) + [named[n] for n in names[len(inputs):] if n in named]
    clash = [n for n in names[: len(inputs)] if n in named]
    if len(given) != len(names) or clash:
        raise TypeError(
            f"{kind.name}: expected {len(names)} inputs in order ({', '.join(names)}), "
            f"got {len(inputs)} positional"
            + (f" and keyword(s) {sorted(named)}" if named else "")
        )
    return tuple(given)


def gpu_backend() -> str | None:
    """``"metal"`` or ``"cuda"`` when MLX's default device is a GPU, else None."""
    if mx.default_device().type != mx.DeviceType.gpu:
        return None
    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    return "cuda" if cuda is not None and cuda.is_available() else None


def _choose(kind: Kind, bound: Bound, arrays: tuple, impl: str) -> Explanation:
    if impl not in PATHS:
        raise ValueError(f"impl must be one of {PATHS}, got {impl!r}")
    if impl in ("fallback", "reference"):
        return Explanation(impl, "forced by impl=")
    backend = gpu_backend()
    if kind.kernel is None:
        why = f"no fused kernel is registered for {kind.name!r}"
    elif backend is None:
        why = f"the default device is {mx.default_device()}, not a Metal or CUDA GPU"
    else:
        why = kind.kernel.unsupported(bound, arrays, backend)
    if why is not None and impl == "kernel":
        raise ValueError(f"{kind.name}: impl='kernel' cannot run here: {why}")
    if why is None and impl == "auto":
        why = kind.kernel.slower(bound, arrays)
    if why is None:
        return Explanation("kernel", f"{backend} kernel on the GPU")
    return Explanation("fallback", why)


def explain(kind: str, *inputs, state=None, **named) -> Explanation:
    """Which path ``scan(kind, *inputs, state=state)`` would take, and why.

    Checks the inputs exactly as ``scan`` does (same errors) from their shapes
    and dtypes only; computes nothing.

    Returns:
        The path and the reason; ``str()`` of it reads as a sentence.
    """
    spec = get_kind(kind)
    arrays = _collect(spec, inputs, named)
    if not _interop.all_mlx(arrays, state):  # array-API bridge: see _interop
        run = functools.partial(explain, kind)
        return _interop.explained(run, spec.name, spec.input_names, arrays, state)
    return _choose(spec, bind(spec, arrays, state), arrays, "auto")


def scan(kind: str, *inputs, state=None, impl: str = "auto", **named) -> tuple[mx.array, mx.array]:
    """Run the recurrence ``kind`` over the time axis ``L`` of ``inputs``.

    Args:
        kind (str): a registered kind: ``"ssd"``, ``"gla"``, ``"rglru"``,
            ``"rotlru"`` or ``"s6"`` (``recurops.KINDS``).
        *inputs (array): the kind's inputs in order; ``recurops.KINDS[kind].signature()``
            gives their names and symbolic shapes. Keyword inputs by those
            names are accepted too. Any number of leading batch dimensions,
            the same on every batched input.
        state (array | None): the initial state, shaped as the kind says;
            None means zeros.
        impl (str): ``"auto"`` (default: the fused kernel on a Metal or CUDA GPU
            where it runs and is faster, the fallback elsewhere),
            ``"kernel"``, ``"fallback"`` or ``"reference"`` (the token loop).

    Returns:
        The pair ``(y, final_state)``, with ``y`` in the dtype the inputs
        promote to and ``final_state`` (the state after the last step) in
        float32, float64 for float64 inputs. Differentiable in every input
        and in ``state``.

    Raises:
        ValueError: unknown kind, a shape that breaks the kind's rules (the
            message names the input, the expected and actual shapes and the
            dimension), a wrong ``state`` shape, a bad ``impl``, or
            ``impl="kernel"`` where no kernel can run.
        TypeError: a wrong number of inputs, a non-floating input, or inputs
            from two array libraries.

    Arrays of any array-API library (NumPy, array-api-strict, PyTorch, JAX,
    ...) are accepted and the results come back in that library, dtype and
    device. Gradients cross that bridge for PyTorch (autograd); under JAX
    transformations it raises TypeError (forward values only); see the
    documentation's interop page.
    """
    spec = get_kind(kind)
    arrays = _collect(spec, inputs, named)
    if not _interop.all_mlx(arrays, state):  # array-API bridge: MLX in, caller's library out
        run = functools.partial(scan, kind, impl=impl)
        return _interop.bridged(run, spec.name, spec.input_names, arrays, state)
    bound = bind(spec, arrays, state)
    path = _choose(spec, bound, arrays, impl).path

    out_dtype = promote(x.dtype for x in arrays)
    flat = math.prod(bound.batch)
    state_shape = bound.shape_of(spec.state)
    zero_state, dtype = state is None, state_dtype(arrays)
    if zero_state:  # lazy: in memory only where a path reads it
        state = mx.zeros(state_shape, dtype)
    state = state.astype(dtype).reshape(flat, *state_shape[len(bound.batch):])
    args = tuple(
        x.reshape(flat, *x.shape[len(bound.batch):]) if i.batched else x
        for i, x in zip(spec.inputs, arrays)
    )

    if bound.dims["L"] == 0 or state.size == 0:
        # Nothing to compute (no work on arrays of size 0 either): the state
        # passes through (with no steps, or empty itself), and every output is
        # zero (an empty sum when the state is empty).
        return mx.zeros(bound.shape_of(spec.output), out_dtype), state.reshape(state_shape)
    if path == "kernel":
        y, final = spec.kernel.run(*args, state)
    elif path == "reference" or bound.dims["L"] <= STEP_FORM_STEPS:
        y, final = spec.reference(*args, state)
    elif spec.independent:  # channels that never interact: over CPU threads
        take, join = channel_slicing(spec, bound)
        y, final = threads.split(spec.fallback, (*args, state), bound.dims[spec.independent],
                                 take, join)
    else:
        y, final = spec.fallback(
            *args, None if zero_state and spec.fallback_state_optional else state)

    y = y.astype(out_dtype).reshape(bound.shape_of(spec.output))
    return y, final.reshape(state_shape)

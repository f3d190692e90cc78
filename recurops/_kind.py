"""What a kind is: its declared inputs and shapes, and the checks they imply.

A kind declares each input's symbolic shape (``"... L H P"``); validation,
error messages, the state shape and the batch handling all follow from those
declarations, so no kind writes its own checks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

import mlx.core as mx

_FLOATING = (mx.float16, mx.bfloat16, mx.float32, mx.float64)
_TOKEN = re.compile(r"^(\d*)([A-Za-z_]\w*)$")
STEP_FORM_STEPS = 4  # the fallback runs calls this short step by step (decoding; docs/paths.md)


def promote(dtypes) -> mx.Dtype:
    """The dtype floating inputs promote to: their common dtype, float64 if
    any is float64, float32 for any other mix."""
    dtypes = set(dtypes)
    if mx.float64 in dtypes:
        return mx.float64
    return dtypes.pop() if len(dtypes) == 1 else mx.float32


def state_dtype(arrays) -> mx.Dtype:
    """The state's dtype for a call on ``arrays``: float64 where they
    promote to it, else float32."""
    return mx.float64 if promote(x.dtype for x in arrays) == mx.float64 else mx.float32


@functools.cache
def _parse(shape: str) -> tuple[bool, tuple[tuple[int, str], ...]]:
    """``"... L 2P"`` -> (batched=True, ((1, "L"), (2, "P")))."""
    tokens = shape.split()
    batched = bool(tokens) and tokens[0] == "..."
    dims = []
    for token in tokens[batched:]:
        match = _TOKEN.match(token)
        if match is None:
            raise ValueError(f"bad symbolic dimension {token!r} in {shape!r}")
        dims.append((int(match[1] or 1), match[2]))
    return batched, tuple(dims)


@dataclass(frozen=True)
class Input:
    """One positional input: its name and the symbolic shapes it may take."""

    name: str
    shapes: tuple[str, ...]
    doc: str = ""

    @property
    def batched(self) -> bool:
        return _parse(self.shapes[0])[0]


@dataclass(frozen=True, eq=False)  # compared and hashed by identity (``_bind``'s cache)
class Kind:
    """A registered recurrence.

    ``reference``, ``fallback`` and ``kernel.run`` all take the inputs in
    declared order with the batch dimensions flattened to one leading axis
    ``B``, plus ``state`` (float32 or float64; None only for a ``fallback``
    that declares ``fallback_state_optional``: zeros it need not have in
    memory), and return ``(y, final_state)`` with ``y`` in
    float32/float64; the API casts ``y``.

    ``independent`` names a symbol whose channels never interact (an axis
    ``cX`` holds ``X`` groups of ``c`` consecutive values): the fallback may
    run slices of them apart (``channel_slicing``).
    """

    name: str
    summary: str
    inputs: tuple[Input, ...]
    state: str
    output: str
    reference: Callable
    fallback: Callable
    divides: tuple[tuple[str, str], ...] = ()
    kernel: object = None
    domain: str = ""
    independent: str = ""
    fallback_state_optional: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def signature(self) -> str:
        args = ", ".join(f"{i.name} [{' | '.join(i.shapes)}]" for i in self.inputs)
        return f"scan({self.name!r}, {args}, state=[{self.state}])"


@dataclass(frozen=True)
class Bound:
    """The result of checking a call: sizes of every symbol and the batch shape."""

    dims: MappingProxyType  # symbol -> size (read-only: bounds are shared from a cache)
    batch: tuple[int, ...]
    variant: MappingProxyType  # input name -> index of the declared shape it matched

    def shape_of(self, symbolic: str) -> tuple[int, ...]:
        batched, dims = _parse(symbolic)
        return (self.batch if batched else ()) + tuple(c * self.dims[s] for c, s in dims)


def channel_slicing(kind: Kind, bound: Bound) -> tuple[Callable, Callable]:
    """``(take, join)`` for ``kind.independent``, on batch-flattened arrays:
    ``take(arrays, lo, hi)`` slices the inputs and the state (in declared
    order) to channels ``[lo, hi)``, leaving inputs without that symbol
    whole; ``join(i, parts)`` concatenates the parts of output ``i`` (``y``,
    then the final state)."""

    def axis(symbolic: str) -> tuple[int, int] | None:  # (axis, values per channel)
        batched, dims = _parse(symbolic)
        for position, (coef, sym) in enumerate(dims):
            if sym == kind.independent:
                return int(batched) + position, coef
        return None

    shapes = [i.shapes[bound.variant[i.name]] for i in kind.inputs] + [kind.state]
    axes = [axis(s) for s in shapes]
    out_axes = [axis(kind.output), axis(kind.state)]

    def take(arrays, lo, hi):
        return tuple(
            x if a is None else x[(slice(None),) * a[0] + (slice(a[1] * lo, a[1] * hi),)]
            for x, a in zip(arrays, axes)
        )

    def join(i, parts):
        return mx.concatenate(parts, axis=out_axes[i][0])

    return take, join


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def bind(kind: Kind, arrays: tuple, state=None) -> Bound:
    """Check shapes and dtypes of one call against ``kind``'s declarations.

    Raises TypeError for non-floating dtypes and ValueError for shapes,
    naming the input, the expected symbolic shape, the actual shape and the
    dimension that disagrees. The result depends on shapes and dtypes alone
    and is remembered for them: a decoding loop, which repeats one call's
    shapes, binds once.
    """
    return _bind(kind, tuple((tuple(x.shape), x.dtype) for x in arrays),
                 None if state is None else (tuple(state.shape), state.dtype))


@functools.lru_cache(maxsize=1024)
def _bind(kind: Kind, inputs: tuple, state: tuple | None) -> Bound:
    """``bind`` of inputs and state given as ``(shape, dtype)`` pairs."""
    dims: dict[str, int] = {}
    source: dict[str, str] = {}
    batch = None
    variant = {}
    for spec, (shape, dtype) in zip(kind.inputs, inputs):
        if dtype not in _FLOATING:
            raise TypeError(
                f"{kind.name}: input {spec.name!r} must be floating "
                f"(float32, bfloat16, float16 or float64), got {dtype}"
            )
        problems = []
        for index, symbolic in enumerate(spec.shapes):
            problem = _match(symbolic, shape, dims, source, spec.name, batch)
            if problem is None:
                variant[spec.name] = index
                break
            problems.append(problem)
        else:
            expected = " or ".join(f"[{s}]" for s in spec.shapes)
            raise ValueError(
                f"{kind.name}: input {spec.name!r} expected shape {expected}, "
                f"got {_fmt(shape)}: {'; '.join(problems)}"
            )
        if spec.batched and batch is None:
            batch = shape[: len(shape) - len(_parse(spec.shapes[variant[spec.name]])[1])]
    for small, big in kind.divides:
        if dims[big] % dims[small]:
            raise ValueError(
                f"{kind.name}: dimension {small}={dims[small]} must divide "
                f"{big}={dims[big]}"
            )
    bound = Bound(MappingProxyType(dims), batch or (), MappingProxyType(variant))
    if state is not None:
        shape, dtype = state
        if dtype not in _FLOATING:
            raise TypeError(f"{kind.name}: 'state' must be floating, got {dtype}")
        expected = bound.shape_of(kind.state)
        if shape != expected:
            raise ValueError(
                f"{kind.name}: 'state' expected shape [{kind.state}] = "
                f"{_fmt(expected)}, got {_fmt(shape)}"
            )
    return bound


def _match(symbolic, shape, dims, source, name, batch=None):
    """Bind ``shape`` against ``symbolic``; return None or what disagrees.

    ``dims`` and ``source`` are updated only when the whole shape matches. A
    batched shape matches only with the batch dimensions seen so far
    (``batch``), so ``[B, L, H, K]`` is never read as ``[..., L, H]`` with
    an extra batch dimension.
    """
    batched, want = _parse(symbolic)
    if len(shape) < len(want) or (not batched and len(shape) != len(want)):
        extra = "at least " if batched else ""
        return f"expected {extra}{len(want)} dimensions, got {len(shape)}"
    if batched and batch is not None and tuple(shape[: len(shape) - len(want)]) != batch:
        lead = _fmt(shape[: len(shape) - len(want)])
        return (
            f"leading (batch) dimensions {lead} differ from {_fmt(batch)} of the inputs "
            f"before it; leading dimensions must be identical across inputs"
        )
    new = {}
    tail = shape[len(shape) - len(want):]
    for (coef, sym), size in zip(want, tail):
        if size % coef:
            return f"dimension {coef}{sym} is {size}, not a multiple of {coef}"
        value = size // coef
        known = new.get(sym, dims.get(sym))
        if known is not None and known != value:
            where = source.get(sym, name)
            return (
                f"dimension {sym} is {value} here but {known} from {where!r}"
            )
        new[sym] = value
    for sym, value in new.items():
        if sym not in dims:
            dims[sym], source[sym] = value, name
    return None

"""Shared test material: calls drawn across each kind's whole domain, and a
float64 NumPy evaluation of SPEC section 3 to hold every path to.

The two halves are independent of each other and of ``recurops``:

- ``draw_call(kind, dtype)`` is a hypothesis strategy for one whole call of
  ``recurops.scan`` (a ``Call``: inputs in SPEC order, optional ``state``),
  with odd sizes, ``L = 1``, ``L`` over several fallback chunks, zero to two
  batch dimensions, and values that include the domain's edges (gates and
  decays of exactly 0 and 1, step sizes of 0, negative ``a`` and ``|a| > 1``).
  ``make_call`` builds one from explicit sizes and a NumPy generator.
- ``spec_numpy(kind, inputs, state)`` runs the recurrence of SPEC section 3 as a
  plain float64 loop over time and returns ``(y, final_state)``.

Kernel tests reuse both, plus ``relative_error`` / ``assert_close`` and
``TOLERANCE`` (SPEC section 4), and the helpers that run a ``Call`` through
``recurops.scan`` and its vector-Jacobian product (``run``, ``cotangents``,
``run_vjp``, ``float64_reference_vjp``, ``spec_sizes``, ``gradient_sizes``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

import recurops

KIND_NAMES = ("ssd", "gla", "rglru", "rotlru", "s6")

# SPEC section 3: the inputs of each kind, in positional order.
INPUT_NAMES = {
    "ssd": ("x", "dt", "A", "B", "C"),
    "gla": ("q", "k", "v", "g"),
    "rglru": ("a", "x"),
    "rotlru": ("a", "cos", "sin", "x"),
    "s6": ("u", "delta", "A", "B", "C"),
}

# Inputs without batch dimensions or a time axis.
_UNBATCHED = frozenset({"A"})

# SPEC section 4: relative error (norm of difference over norm of the float64
# value) that results in each input dtype must stay under. SPEC gives none for
# float64 inputs; MLX's float64 ``exp`` on the CPU is only float32-accurate
# (relative errors up to 1.9e-6, measured with MLX 0.32) and ssd / s6 compound
# one per step, hence 1e-5.
TOLERANCE = {
    mx.float32: 1e-4,
    mx.bfloat16: 2e-2,
    mx.float16: 2e-2,
    mx.float64: 1e-5,
}
LOW_PRECISION = (mx.bfloat16, mx.float16)

MAX_LENGTH = 150  # two to nine chunks of the chunked fallbacks (16 or 64 steps)


# --------------------------------------------------------------------------
# Arrays


def to_numpy64(x) -> np.ndarray:
    """An MLX or NumPy array as a float64 NumPy array (a copy)."""
    if isinstance(x, mx.array):
        x = x if x.dtype == mx.float64 else x.astype(mx.float32)
        return np.array(x, dtype=np.float64)
    return np.array(x, dtype=np.float64)


# The smallest normal number of each dtype: below it a result has fewer
# significant bits.
_SMALLEST_NORMAL = {
    mx.float64: float(np.finfo(np.float64).tiny),
    mx.float32: float(np.finfo(np.float32).tiny),
    mx.bfloat16: float(np.finfo(np.float32).tiny),  # float32's exponent range
    mx.float16: float(np.finfo(np.float16).tiny),
}

# The largest finite number of each dtype: a result beyond it overflows.
_LARGEST = {
    mx.float64: float(np.finfo(np.float64).max),
    mx.float32: float(np.finfo(np.float32).max),
    mx.bfloat16: float(np.array(0x7F7F0000, np.uint32).view(np.float32)),  # 3.39e38
    mx.float16: float(np.finfo(np.float16).max),
}

# A result that cancels to far below its usual size (a sum of terms of size
# 0.1 that comes to 2e-5, say) cannot keep relative precision in float32: the
# float32 reference loop misses such a value by 1e-3 as well. Such a result is
# held to ``tol`` relative to this fraction of its usual size instead (see
# ``assert_close``); a result no smaller than that is held to plain ``tol``.
CANCELLATION = 1e-2


def relative_error(actual, expected, floor: float = 0.0) -> float:
    """norm(actual - expected) / max(norm(expected), floor), in float64.

    Where ``expected`` is exactly zero (and ``floor`` is 0) the plain norm of
    the difference is returned, so an exact zero must be matched to within the
    tolerance.
    """
    actual, expected = to_numpy64(actual), to_numpy64(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    diff = np.linalg.norm(actual - expected)
    scale = max(np.linalg.norm(expected), floor)
    if not np.isfinite(diff):
        return float("inf")
    return float(diff / scale) if scale > 0 else float(diff)


def assert_close(actual, expected, tol: float, what: str, usual_size: float = 0.0) -> None:
    """``relative_error`` of ``actual`` (an MLX array) under ``tol``, SPEC section 4.

    The error is taken relative to ``norm(expected)`` but never to less than
    ``CANCELLATION * usual_size`` (``usual_size``: the norm the value has
    without cancellation, from ``spec_sizes`` or ``gradient_sizes``) nor
    ``smallest_normal / tol`` (a value wholly below its dtype's normal range,
    like a gradient through hundreds of contracting steps, 1e-44 in float32,
    cannot carry relative precision either). Entries beyond the dtype's
    largest finite value by more than ``tol`` (a float16 gradient that sums
    to 7e4, say) must come back as the infinity of their sign; those within
    ``tol`` of that value may round either way and are left out.
    """
    largest = _LARGEST[actual.dtype]
    values, expected = to_numpy64(actual), to_numpy64(expected)
    beyond = np.abs(expected) >= largest * (1 + tol)
    assert np.array_equal(values[beyond], np.sign(expected[beyond]) * np.inf), (
        f"{what}: values beyond the {actual.dtype} range did not overflow")
    kept = np.abs(expected) < largest
    floor = max(_SMALLEST_NORMAL[actual.dtype] / tol, CANCELLATION * usual_size)
    error = relative_error(values[kept], expected[kept], floor)
    assert error < tol, f"{what}: relative error {error:.3g} >= {tol:g}"


# --------------------------------------------------------------------------
# Calls


@dataclass(frozen=True)
class Call:
    """One call ``recurops.scan(kind, *inputs, state=state)``."""

    kind: str
    inputs: tuple  # mx arrays, SPEC order
    state: mx.array | None
    batch: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return INPUT_NAMES[self.kind]

    @property
    def time_axis(self) -> int:
        """The axis of ``L`` in every input that has one."""
        return len(self.batch)

    @property
    def length(self) -> int:
        return self.inputs[0].shape[self.time_axis]

    @property
    def dtype(self) -> mx.Dtype:
        return self.inputs[0].dtype

    def named(self) -> dict:
        return dict(zip(self.names, self.inputs, strict=True))

    def astype(self, dtype: mx.Dtype) -> Call:
        """The same values in ``dtype`` (the state too, when there is one)."""
        inputs = tuple(x.astype(dtype) for x in self.inputs)
        state = None if self.state is None else self.state.astype(dtype)
        return replace(self, inputs=inputs, state=state)

    def steps(self, start: int, stop: int, state=None) -> Call:
        """Time steps ``start:stop`` of this call, starting from ``state``."""
        index = (slice(None),) * self.time_axis + (slice(start, stop),)
        inputs = tuple(
            x if name in _UNBATCHED else x[index]
            for name, x in zip(self.names, self.inputs, strict=True)
        )
        return replace(self, inputs=inputs, state=state)

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{n}{list(x.shape)}" for n, x in zip(self.names, self.inputs, strict=True)
        )
        state = "None" if self.state is None else str(list(self.state.shape))
        return f"Call({self.kind!r}, {shapes}, state={state}, dtype={self.dtype})"


def _with_specials(rng, values: np.ndarray, specials, fraction: float) -> np.ndarray:
    """``values`` with about ``fraction`` of the entries replaced by ``specials``."""
    if fraction == 0 or values.size == 0:
        return values
    hit = rng.random(values.shape) < fraction
    return np.where(hit, rng.choice(np.asarray(specials, float), values.shape), values)


def _normal(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape)


def _gates(rng, shape, fraction) -> np.ndarray:
    """Gates in [0, 1], skewed towards 1 (long memory), exact 0 and 1 mixed in."""
    return _with_specials(rng, 1 - rng.uniform(0, 1, shape) ** 3, (0.0, 1.0), fraction)


def _steps(rng, shape, fraction) -> np.ndarray:
    """Step sizes ``dt`` / ``delta`` >= 0, exact 0 mixed in."""
    return _with_specials(rng, rng.uniform(0, 1.5, shape), (0.0,), fraction)


def _rates(rng, shape, fraction) -> np.ndarray:
    """Decay rates ``A`` <= 0, exact 0 (no decay) and strong decay mixed in."""
    return _with_specials(rng, -rng.uniform(0, 2, shape), (0.0, -8.0), fraction)


def _real_gates(rng, shape, fraction) -> np.ndarray:
    """Any real ``a`` with |a| <= 1.1: negative, above 1, and exact 0, 1, -1."""
    return _with_specials(rng, rng.uniform(-1.1, 1.1, shape), (0.0, 1.0, -1.0), fraction)


def _ssd(rng, lead, sizes, fraction):
    H, P, N, G = sizes["H"], sizes["P"], sizes["N"], sizes["G"]
    a_shape = (H, N) if sizes["A_per_channel"] else (H,)
    return (
        _normal(rng, lead + (H, P)),
        _steps(rng, lead + (H,), fraction),
        _rates(rng, a_shape, fraction),
        _normal(rng, lead + (G, N)),
        _normal(rng, lead + (G, N)),
    ), (H, P, N)


def _gla(rng, lead, sizes, fraction):
    H, K, V = sizes["H"], sizes["K"], sizes["V"]
    g_shape = lead + ((H, K) if sizes["g_per_channel"] else (H,))
    return (
        _normal(rng, lead + (H, K)) / np.sqrt(K),
        _normal(rng, lead + (H, K)),
        _normal(rng, lead + (H, V)),
        _gates(rng, g_shape, fraction),
    ), (H, K, V)


def _rglru(rng, lead, sizes, fraction):
    D = sizes["D"]
    return (_real_gates(rng, lead + (D,), fraction), _normal(rng, lead + (D,))), (D,)


def _rotlru(rng, lead, sizes, fraction):
    P = sizes["P"]
    radius = rng.uniform(0, 1.05, lead + (P,))  # (cos, sin) need not be normalised
    angle = rng.uniform(-np.pi, np.pi, lead + (P,))
    cos = _with_specials(rng, radius * np.cos(angle), (0.0, 1.0, -1.0), fraction)
    sin = _with_specials(rng, radius * np.sin(angle), (0.0, 1.0), fraction)
    return (
        _real_gates(rng, lead + (P,), fraction),
        cos,
        sin,
        _normal(rng, lead + (2 * P,)),
    ), (2 * P,)


def _s6(rng, lead, sizes, fraction):
    D, N = sizes["D"], sizes["N"]
    return (
        _normal(rng, lead + (D,)),
        _steps(rng, lead + (D,), fraction),
        _rates(rng, (D, N), fraction),
        _normal(rng, lead + (N,)),
        _normal(rng, lead + (N,)),
    ), (D, N)


_MAKERS = {"ssd": _ssd, "gla": _gla, "rglru": _rglru, "rotlru": _rotlru, "s6": _s6}


def make_call(
    kind: str,
    rng: np.random.Generator,
    *,
    sizes: dict,
    length: int,
    batch: tuple[int, ...] = (),
    dtype: mx.Dtype = mx.float32,
    with_state: bool = False,
    specials: float = 0.1,
) -> Call:
    """One call of ``kind`` with the given sizes and values drawn from ``rng``.

    ``sizes`` holds the kind's symbols (see ``kind_sizes``); ``specials`` is
    the fraction of entries set to the domain's edge values. The state, when
    there is one, is float32 (float64 for float64 inputs).
    """
    batch = tuple(batch)
    values, state_tail = _MAKERS[kind](rng, batch + (length,), sizes, specials)
    state_dtype = mx.float64 if dtype == mx.float64 else mx.float32
    with where_supported(dtype):
        inputs = tuple(
            mx.array(v.astype(np.float32) if dtype != mx.float64 else v).astype(dtype)
            for v in values
        )
        state = None
        if with_state:
            state = mx.array(_normal(rng, batch + state_tail)).astype(state_dtype)
    return Call(kind, inputs, state, batch)


EXAMPLE_SIZES = {
    "ssd": {"H": 4, "G": 2, "P": 3, "N": 5, "A_per_channel": True},
    "gla": {"H": 2, "K": 3, "V": 5, "g_per_channel": True},
    "rglru": {"D": 5},
    "rotlru": {"P": 3},
    "s6": {"D": 3, "N": 5},
}


def example_call(kind: str, dtype: mx.Dtype = mx.float32, seed: int = 0, **options) -> Call:
    """A fixed valid call: ``EXAMPLE_SIZES``, ``L = 7``, batch ``(2,)``, with a state.

    ``options`` override ``make_call``'s keywords (``length``, ``batch``, ...).
    """
    options = {"length": 7, "batch": (2,), "with_state": True, **options}
    rng = np.random.default_rng(seed)
    return make_call(kind, rng, sizes=EXAMPLE_SIZES[kind], dtype=dtype, **options)


# --------------------------------------------------------------------------
# Strategies

_ODD_SMALL = st.sampled_from((1, 2, 3, 5))


@st.composite
def _ssd_sizes(draw):
    heads = draw(st.sampled_from((1, 2, 3, 4, 6)))
    groups = draw(st.sampled_from([g for g in range(1, heads + 1) if heads % g == 0]))
    return {
        "H": heads,
        "G": groups,
        "P": draw(_ODD_SMALL),
        "N": draw(_ODD_SMALL),
        "A_per_channel": draw(st.booleans()),
    }


@st.composite
def _gla_sizes(draw):
    keys = draw(st.integers(1, 5))
    values = draw(st.integers(1, 5).filter(lambda v: v != keys))  # K != V
    return {
        "H": draw(st.integers(1, 3)),
        "K": keys,
        "V": values,
        "g_per_channel": draw(st.booleans()),
    }


_SIZES = {
    "ssd": _ssd_sizes(),
    "gla": _gla_sizes(),
    "rglru": st.fixed_dictionaries({"D": st.integers(1, 7)}),
    "rotlru": st.fixed_dictionaries({"P": st.integers(1, 5)}),
    "s6": st.fixed_dictionaries({"D": st.integers(1, 5), "N": _ODD_SMALL}),
}


def kind_sizes(kind: str) -> st.SearchStrategy[dict]:
    """The sizes of every symbol of ``kind`` except ``L`` and the batch."""
    return _SIZES[kind]


def lengths(max_length: int = MAX_LENGTH) -> st.SearchStrategy[int]:
    """``L``: 1, short, or spanning several chunks of the fallbacks."""
    short = min(max_length, 20)
    options = [st.just(1), st.integers(1, short)]
    if max_length > short:
        options.append(st.integers(short, max_length))
    return st.one_of(options)


batches = st.lists(st.integers(1, 3), max_size=2).map(tuple)


@st.composite
def draw_call(
    draw,
    kind: str,
    dtype: mx.Dtype = mx.float32,
    max_length: int = MAX_LENGTH,
    state: bool | None = None,
) -> Call:
    """A strategy for one whole call of ``kind`` with inputs in ``dtype``.

    ``state`` forces an initial state (True) or none (False); by default
    both are drawn.
    """
    return make_call(
        kind,
        np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
        sizes=draw(kind_sizes(kind)),
        length=draw(lengths(max_length)),
        batch=draw(batches),
        dtype=dtype,
        with_state=draw(st.booleans()) if state is None else state,
        specials=draw(st.sampled_from((0.0, 0.1, 0.5))),
    )


# --------------------------------------------------------------------------
# SPEC section 3 in float64 NumPy: plain loops over time, written from the SPEC


def _ssd_numpy(x, dt, A, B, C, h):
    *batch, length, heads, _ = x.shape
    groups = B.shape[-2]
    group_of = np.arange(heads) // (heads // groups)
    rates = A if A.ndim == 2 else A[:, None]  # [H, N] or [H, 1]
    ys = []
    for t in range(length):
        decay = np.exp(dt[..., t, :, None] * rates)  # [..., H, N or 1]
        b = B[..., t, group_of, :]  # [..., H, N]
        c = C[..., t, group_of, :]
        h = decay[..., :, None, :] * h + (
            dt[..., t, :, None, None] * b[..., :, None, :] * x[..., t, :, :, None]
        )
        ys.append((c[..., :, None, :] * h).sum(-1))
    return ys, h


def _gla_numpy(q, k, v, g, S):
    per_head = g.ndim == q.ndim - 1
    ys = []
    for t in range(q.shape[-3]):
        gate = g[..., t, :, None] if per_head else g[..., t, :, :]  # [..., H, K or 1]
        S = gate[..., None] * S + k[..., t, :, :, None] * v[..., t, :, None, :]
        ys.append((q[..., t, :, :, None] * S).sum(-2))
    return ys, S


def _rglru_numpy(a, x, h):
    ys = []
    for t in range(a.shape[-2]):
        h = a[..., t, :] * h + x[..., t, :]
        ys.append(h)
    return ys, h


def _rotlru_numpy(a, cos, sin, x, state):
    u, w = state[..., 0::2], state[..., 1::2]
    ys = []
    for t in range(a.shape[-2]):
        at, ct, st_ = a[..., t, :], cos[..., t, :], sin[..., t, :]
        u, w = (
            at * (ct * u - st_ * w) + x[..., t, 0::2],
            at * (st_ * u + ct * w) + x[..., t, 1::2],
        )
        y = np.empty(u.shape[:-1] + (2 * u.shape[-1],))
        y[..., 0::2], y[..., 1::2] = u, w
        ys.append(y)
    final = np.empty(state.shape)
    final[..., 0::2], final[..., 1::2] = u, w
    return ys, final


def _s6_numpy(u, delta, A, B, C, h):
    ys = []
    for t in range(u.shape[-2]):
        d = delta[..., t, :, None]  # [..., D, 1]
        h = np.exp(d * A) * h + d * B[..., t, None, :] * u[..., t, :, None]
        ys.append((C[..., t, None, :] * h).sum(-1))
    return ys, h


def _shapes(kind: str, inputs: tuple) -> tuple[tuple, tuple]:
    """(shape of y, shape of the state) from SPEC section 3."""
    first = inputs[0].shape  # every kind's first input is [..., L, ...]
    if kind == "ssd":
        x, B = inputs[0], inputs[3]
        return x.shape, x.shape[:-3] + x.shape[-2:] + B.shape[-1:]
    if kind == "gla":
        q, v = inputs[0], inputs[2]
        return v.shape, q.shape[:-3] + q.shape[-2:] + v.shape[-1:]
    if kind == "rglru":
        return first, first[:-2] + first[-1:]
    if kind == "rotlru":
        x = inputs[3]
        return x.shape, x.shape[:-2] + x.shape[-1:]
    u, A = inputs[0], inputs[2]  # s6
    return u.shape, u.shape[:-2] + A.shape


_ORACLES = {
    "ssd": _ssd_numpy,
    "gla": _gla_numpy,
    "rglru": _rglru_numpy,
    "rotlru": _rotlru_numpy,
    "s6": _s6_numpy,
}


# Inputs whose domain fixes their sign (step sizes, decay rates, gates).
_SIGN_FIXED = frozenset({"dt", "delta", "A", "g"})


def spec_sizes(kind: str, inputs, state=None) -> tuple[float, float]:
    """The usual sizes of ``y`` and the final state for ``assert_close``.

    The norms of ``spec_numpy`` on the magnitudes of the inputs (all but the
    sign-fixed decay parameters), where no term can cancel another: the
    standard bound that rounding errors of the exact sums scale with.
    """
    magnitudes = tuple(
        to_numpy64(x) if name in _SIGN_FIXED else np.abs(to_numpy64(x))
        for name, x in zip(INPUT_NAMES[kind], inputs, strict=True)
    )
    state = None if state is None else np.abs(to_numpy64(state))
    y, final = spec_numpy(kind, magnitudes, state)
    return float(np.linalg.norm(y)), float(np.linalg.norm(final))


def spec_numpy(kind: str, inputs, state=None) -> tuple[np.ndarray, np.ndarray]:
    """SPEC section 3 for ``kind`` in float64: ``(y, final_state)`` as NumPy arrays.

    ``inputs`` and ``state`` may be MLX or NumPy arrays of any floating dtype;
    they are read as float64 (so low-precision inputs are evaluated exactly as
    given). ``state=None`` means zeros.
    """
    inputs = tuple(to_numpy64(x) for x in inputs)
    y_shape, state_shape = _shapes(kind, inputs)
    state = np.zeros(state_shape) if state is None else to_numpy64(state)
    outputs, final = _ORACLES[kind](*inputs, state)
    time_axis = len(y_shape) - (3 if kind in ("ssd", "gla") else 2)
    y = np.stack(outputs, axis=time_axis) if outputs else np.zeros(y_shape)
    return y, final


# --------------------------------------------------------------------------
# Running a Call through recurops


def where_supported(*dtypes):
    """The stream for work in ``dtypes``: the CPU's when one is float64 (SPEC
    section 4: float64 where the device supports it; MLX's GPUs do not),
    else the default."""
    return mx.stream(mx.cpu) if mx.float64 in dtypes else contextlib.nullcontext()


def _dtypes(*arrays):
    return tuple(x.dtype for x in arrays if x is not None)


def run(call: Call, impl: str = "auto") -> tuple[mx.array, mx.array]:
    """``recurops.scan`` on ``call``: ``(y, final_state)``."""
    with where_supported(*_dtypes(*call.inputs, call.state)):
        return recurops.scan(call.kind, *call.inputs, state=call.state, impl=impl)


def primal_names(call: Call) -> tuple[str, ...]:
    """What ``run_vjp`` differentiates: every input, and ``state`` when given."""
    return call.names + (() if call.state is None else ("state",))


def expected_dtypes(inputs) -> tuple[mx.Dtype, mx.Dtype]:
    """SPEC section 4: ``y`` in the dtype the inputs promote to (MLX's rules), the
    state in float32, or float64 for float64 inputs."""
    with mx.stream(mx.cpu):  # float64 arrays exist on the CPU only
        promoted = functools.reduce(
            lambda a, b: (mx.zeros((), a) + mx.zeros((), b)).dtype, (x.dtype for x in inputs)
        )
    return promoted, (mx.float64 if promoted == mx.float64 else mx.float32)


def cotangents(call: Call, rng: np.random.Generator) -> tuple[mx.array, mx.array]:
    """Random cotangents for ``(y, final_state)`` of ``call``, in their dtypes."""
    shapes = _shapes(call.kind, call.inputs)
    dtypes = expected_dtypes(call.inputs)
    with where_supported(*dtypes):
        return tuple(
            mx.array(_normal(rng, shape).astype(np.float32)).astype(dtype)
            for shape, dtype in zip(shapes, dtypes, strict=True)
        )


def run_vjp(call: Call, impl: str, cotangent: tuple) -> tuple[tuple, tuple]:
    """``((y, final_state), gradients)`` of ``recurops.scan`` on ``call``.

    The gradients follow ``primal_names(call)``: every input, then ``state``
    when the call has one.
    """
    count = len(call.inputs)

    def scan(*primals):
        state = primals[count] if len(primals) > count else None
        return recurops.scan(call.kind, *primals[:count], state=state, impl=impl)

    primals = list(call.inputs) + ([] if call.state is None else [call.state])
    with where_supported(*_dtypes(*primals)):
        outputs, grads = mx.vjp(scan, primals, list(cotangent))
    return tuple(outputs), tuple(grads)


def float64_reference_vjp(call: Call, cotangent: tuple) -> tuple[tuple, tuple]:
    """``run_vjp`` of the reference path on float64 copies of ``call`` and
    ``cotangent``: what every path's gradients are held to."""
    with mx.stream(mx.cpu):  # float64 runs on the CPU only
        wide = tuple(c.astype(mx.float64) for c in cotangent)
        wide_call = call.astype(mx.float64)
    return run_vjp(wide_call, "reference", wide)


def gradient_sizes(call: Call, rng: np.random.Generator) -> tuple[float, ...]:
    """The usual size of each gradient of ``call`` for ``assert_close``: its
    norm under a fresh random cotangent (float64 reference), which a gradient
    that happens to cancel under one cotangent does not share."""
    _, grads = float64_reference_vjp(call, cotangents(call, rng))
    return tuple(float(np.linalg.norm(to_numpy64(g))) for g in grads)

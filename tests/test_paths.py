"""Every kind on every path that runs here, against SPEC sections 1, 3 and 4.

The chain of oracles: a float64 NumPy loop written from SPEC section 3
(``cases.spec_numpy``) checks values; its central finite differences check the
reference path's float64 gradients; those check every path's gradients.
"""

from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from cases import (
    EXAMPLE_SIZES,
    KIND_NAMES,
    LOW_PRECISION,
    TOLERANCE,
    Call,
    assert_close,
    cotangents,
    draw_call,
    example_call,
    expected_dtypes,
    float64_reference_vjp,
    gradient_sizes,
    make_call,
    primal_names,
    run,
    run_vjp,
    spec_numpy,
    spec_sizes,
    to_numpy64,
    where_supported,
)
from hypothesis import given
from hypothesis import strategies as st

import recurops

PATHS = ("reference", "fallback", "auto")
DTYPES = (mx.float32, *LOW_PRECISION)

seeds = st.integers(0, 2**32 - 1)


def _dtype_id(dtype: mx.Dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


kinds = pytest.mark.parametrize("kind", KIND_NAMES)
paths = pytest.mark.parametrize("impl", PATHS)
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)


def assert_matches_spec(call: Call, y, final, tol: float, what: str = "") -> None:
    """``(y, final)`` against the float64 NumPy evaluation of ``call``."""
    want_y, want_final = spec_numpy(call.kind, call.inputs, call.state)
    y_size, state_size = spec_sizes(call.kind, call.inputs, call.state)
    assert y.shape == want_y.shape, f"{what} y shape {y.shape} != {want_y.shape}"
    assert final.shape == want_final.shape, f"{what} state shape {final.shape}"
    assert_close(y, want_y, tol, f"{what} y", y_size)
    assert_close(final, want_final, tol, f"{what} final_state", state_size)


def assert_gradients_match(call: Call, grads, cotangent, tol: float, seed: int) -> None:
    """Gradients of one path against the float64 reference's, input by input.

    ``seed`` draws the second cotangent that gives each gradient's usual size.
    """
    _, want = float64_reference_vjp(call, cotangent)
    sizes = gradient_sizes(call, np.random.default_rng(seed))
    primals = [x for x in (*call.inputs, call.state) if x is not None]
    for name, primal, grad, expected, size in zip(
        primal_names(call), primals, grads, want, sizes, strict=True
    ):
        assert grad.shape == primal.shape, f"d{name} shape {grad.shape} != {primal.shape}"
        assert grad.dtype == primal.dtype, f"d{name} dtype {grad.dtype} != {primal.dtype}"
        assert_close(grad, expected, tol, f"d{name}", size)


# --------------------------------------------------------------------------
# Values and gradients


@kinds
@paths
@pytest.mark.parametrize("dtype", (*DTYPES, mx.float64), ids=_dtype_id)
@given(data=st.data())
def test_values_match_spec(kind, impl, dtype, data):
    call = data.draw(draw_call(kind, dtype), label="call")
    y, final = run(call, impl)
    y_dtype, state_dtype = expected_dtypes(call.inputs)
    assert y.dtype == y_dtype
    assert final.dtype == state_dtype
    assert_matches_spec(call, y, final, TOLERANCE[dtype])


@kinds
@paths
@dtypes
@given(data=st.data())
def test_gradients_match_float64_reference(kind, impl, dtype, data):
    """Every input's and the state's gradient, with cotangents on y and final_state."""
    call = data.draw(draw_call(kind, dtype), label="call")
    seed = data.draw(seeds, label="seed")
    cotangent = cotangents(call, np.random.default_rng(seed))
    _, grads = run_vjp(call, impl, cotangent)
    assert_gradients_match(call, grads, cotangent, TOLERANCE[dtype], seed + 1)


@kinds
@paths
@given(data=st.data())
def test_loss_on_final_state_alone(kind, impl, data):
    """A loss on the final state only (zero cotangent on y) differentiates correctly."""
    call = data.draw(draw_call(kind), label="call")
    seed = data.draw(seeds, label="seed")
    y_cotangent, state_cotangent = cotangents(call, np.random.default_rng(seed))
    cotangent = (mx.zeros_like(y_cotangent), state_cotangent)
    _, grads = run_vjp(call, impl, cotangent)
    assert_gradients_match(call, grads, cotangent, TOLERANCE[mx.float32], seed + 1)


# One tiny call per kind (and per input-shape variant): few enough numbers to
# take central differences of the NumPy oracle in every one of them.
TINY = [
    ("ssd", {"H": 2, "G": 1, "P": 2, "N": 3, "A_per_channel": False}),
    ("ssd", {"H": 4, "G": 2, "P": 1, "N": 2, "A_per_channel": True}),
    ("gla", {"H": 2, "K": 3, "V": 2, "g_per_channel": False}),
    ("gla", {"H": 1, "K": 2, "V": 3, "g_per_channel": True}),
    ("rglru", {"D": 3}),
    ("rotlru", {"P": 2}),
    ("s6", {"D": 2, "N": 3}),
]


def _finite_difference_gradients(call: Call, cotangent, step: float = 1e-6) -> list:
    """Central differences of <cotangent, spec_numpy(call)> in every number of every primal."""
    y_cotangent, state_cotangent = (to_numpy64(c) for c in cotangent)
    primals = [to_numpy64(x) for x in (*call.inputs, call.state) if x is not None]
    count = len(call.inputs)

    def loss(values):
        state = values[count] if len(values) > count else None
        y, final = spec_numpy(call.kind, values[:count], state)
        return np.sum(y_cotangent * y) + np.sum(state_cotangent * final)

    grads = []
    for which, primal in enumerate(primals):
        grad = np.zeros_like(primal)
        for index in np.ndindex(primal.shape):
            shifted = [p.copy() for p in primals]
            shifted[which][index] = primal[index] + step
            above = loss(shifted)
            shifted[which][index] = primal[index] - step
            grad[index] = (above - loss(shifted)) / (2 * step)
        grads.append(grad)
    return grads


@pytest.mark.parametrize(("kind", "sizes"), TINY, ids=[f"{k}-{i}" for i, (k, _) in enumerate(TINY)])
def test_reference_gradients_match_finite_differences(kind, sizes):
    rng = np.random.default_rng(7)
    call = make_call(
        kind, rng, sizes=sizes, length=4, batch=(2,), dtype=mx.float64,
        with_state=True, specials=0.3,
    )
    cotangent = cotangents(call, rng)
    _, grads = float64_reference_vjp(call, cotangent)
    for name, grad, want in zip(
        primal_names(call), grads, _finite_difference_gradients(call, cotangent), strict=True
    ):
        assert_close(grad, want, TOLERANCE[mx.float64], f"d{name}")


@pytest.mark.parametrize(("batch", "size"), [((), 1), ((), 3), ((2,), 2)])
def test_gla_per_channel_gate_when_length_heads_and_keys_coincide(batch, size):
    """``g [..., L, H, K]`` with L == H == K is also shaped like ``[..., L', H']``
    with one more batch dimension; it is still the per-channel gate of SPEC 3."""
    sizes = {"H": size, "K": size, "V": size + 1, "g_per_channel": True}
    call = make_call("gla", np.random.default_rng(3), sizes=sizes, length=size, batch=batch)
    y, final = run(call)
    assert_matches_spec(call, y, final, TOLERANCE[mx.float32])


@kinds
@pytest.mark.parametrize("impl", ("fallback", "auto"))
def test_long_sequence(kind, impl):
    """SPEC section 4's tolerances hold up to L = 4096, edge values mixed in."""
    call = example_call(kind, length=4096, batch=(1,), specials=0.3)
    if impl == "auto" and recurops.explain(kind, *call.inputs, state=call.state).path == "fallback":
        pytest.skip("auto takes the fallback here")
    assert_matches_spec(call, *run(call, impl), TOLERANCE[mx.float32])
    cotangent = cotangents(call, np.random.default_rng(2))
    _, grads = run_vjp(call, impl, cotangent)
    assert_gradients_match(call, grads, cotangent, TOLERANCE[mx.float32], 3)


# --------------------------------------------------------------------------
# State passing: chunked prefill and step-by-step decoding


def _concat_time(call: Call, pieces) -> mx.array:
    return mx.concatenate(pieces, axis=call.time_axis)


@kinds
@paths
@given(data=st.data())
def test_chunks_carrying_state_equal_one_call(kind, impl, data):
    call = data.draw(draw_call(kind), label="call")
    split = data.draw(st.integers(0, call.length), label="split")
    y1, state1 = run(call.steps(0, split, call.state), impl)
    y2, state2 = run(call.steps(split, call.length, state1), impl)
    y, final = run(call, impl)
    y_size, state_size = spec_sizes(kind, call.inputs, call.state)
    tol = TOLERANCE[mx.float32]
    assert_close(_concat_time(call, [y1, y2]), y, tol, f"y split at {split}", y_size)
    assert_close(state2, final, tol, f"final_state split at {split}", state_size)


@kinds
@paths
@given(data=st.data())
def test_step_by_step_decoding_equals_one_call(kind, impl, data):
    call = data.draw(draw_call(kind, max_length=10), label="call")
    state, ys = call.state, []
    for t in range(call.length):
        y, state = run(call.steps(t, t + 1, state), impl)
        ys.append(y)
    y, final = run(call, impl)
    y_size, state_size = spec_sizes(kind, call.inputs, call.state)
    tol = TOLERANCE[mx.float32]
    assert_close(_concat_time(call, ys), y, tol, "y decoded step by step", y_size)
    assert_close(state, final, tol, "final_state decoded step by step", state_size)


@kinds
@paths
@given(data=st.data())
def test_empty_sequence_returns_the_initial_state(kind, impl, data):
    call = data.draw(draw_call(kind), label="call")
    call = call.steps(0, 0, call.state)
    cotangent = cotangents(call, np.random.default_rng(0))
    (y, final), grads = run_vjp(call, impl, cotangent)
    want_y, want_final = spec_numpy(call.kind, call.inputs, call.state)
    assert y.shape == want_y.shape
    assert (y.dtype, final.dtype) == expected_dtypes(call.inputs)
    assert np.array_equal(to_numpy64(final), want_final)
    if call.state is not None:
        assert np.array_equal(to_numpy64(grads[-1]), to_numpy64(cotangent[1]))


def _assert_zero_gradients(call: Call, grads) -> None:
    """Every gradient of ``call`` (state included) zero, in its primal's shape."""
    for name, primal, grad in zip(primal_names(call), (*call.inputs, call.state), grads,
                                  strict=True):
        assert grad.shape == primal.shape, f"d{name}"
        assert not np.any(to_numpy64(grad)), f"d{name} is not zero"


@kinds
@paths
def test_empty_batch(kind, impl):
    call = example_call(kind, batch=(0, 2))
    (y, final), grads = run_vjp(call, impl, cotangents(call, np.random.default_rng(0)))
    want_y, want_final = spec_numpy(kind, call.inputs, call.state)
    assert (y.shape, final.shape) == (want_y.shape, want_final.shape)
    _assert_zero_gradients(call, grads)


@paths
@pytest.mark.parametrize(("kind", "size"), [
    ("ssd", "N"), ("ssd", "P"), ("gla", "K"), ("gla", "V"), ("rglru", "D"), ("rotlru", "P"),
    ("s6", "N"), ("s6", "D"),
])
def test_empty_state(kind, size, impl):
    """A state dimension of 0: ``y`` is an empty sum (zero) or empty itself,
    and every gradient is zero."""
    call = make_call(kind, np.random.default_rng(0), sizes={**EXAMPLE_SIZES[kind], size: 0},
                     length=7, batch=(2,), with_state=True)
    (y, final), grads = run_vjp(call, impl, cotangents(call, np.random.default_rng(1)))
    want_y, want_final = spec_numpy(kind, call.inputs, call.state)
    assert (y.shape, final.shape) == (want_y.shape, want_final.shape)
    assert np.array_equal(to_numpy64(y), want_y)
    _assert_zero_gradients(call, grads)


# --------------------------------------------------------------------------
# Dtypes


MIXES = [
    (mx.bfloat16, mx.float32),
    (mx.float16, mx.float32),
    (mx.bfloat16, mx.float16),
    (mx.float64, mx.float32),
    (mx.bfloat16, mx.float64),
]


@kinds
@paths
@pytest.mark.parametrize(
    ("first", "rest"), MIXES, ids=[f"{_dtype_id(a)}+{_dtype_id(b)}" for a, b in MIXES]
)
def test_mixed_input_dtypes_promote(kind, impl, first, rest):
    call = example_call(kind, length=37)
    with where_supported(first, rest):
        inputs = (call.inputs[0].astype(first), *(x.astype(rest) for x in call.inputs[1:]))
    call = replace(call, inputs=inputs)
    y, final = run(call, impl)
    assert (y.dtype, final.dtype) == expected_dtypes(inputs)
    tol = max(TOLERANCE[first], TOLERANCE[rest])
    assert_matches_spec(call, y, final, tol)


@kinds
@paths
@pytest.mark.parametrize("state_dtype", (mx.bfloat16, mx.float16, mx.float64), ids=_dtype_id)
def test_state_is_returned_in_float32_whatever_its_dtype(kind, impl, state_dtype):
    call = example_call(kind, length=37)
    with where_supported(state_dtype):
        call = replace(call, state=call.state.astype(state_dtype))
    y, final = run(call, impl)
    assert (y.dtype, final.dtype) == (mx.float32, mx.float32)
    assert_matches_spec(call, y, final, TOLERANCE[mx.float32])


# --------------------------------------------------------------------------
# Transformations and calling conventions


@kinds
@pytest.mark.parametrize("impl", ("fallback", "auto"))
@given(data=st.data())
def test_scan_inside_compile(kind, impl, data):
    """``mx.compile`` of a scan, and of the gradient of a loss on both outputs."""
    call = data.draw(draw_call(kind, max_length=40, state=True), label="call")
    seed = data.draw(seeds, label="seed")
    y_cotangent, state_cotangent = cotangents(call, np.random.default_rng(seed))
    count = len(call.inputs)

    def forward(*primals):
        return recurops.scan(kind, *primals[:count], state=primals[count], impl=impl)

    def loss(*primals):
        y, final = forward(*primals)
        return (y * y_cotangent).sum() + (final * state_cotangent).sum()

    primals = (*call.inputs, call.state)
    y, final = mx.compile(forward)(*primals)
    assert_matches_spec(call, y, final, TOLERANCE[mx.float32], "compiled")
    grads = mx.compile(mx.grad(loss, argnums=list(range(count + 1))))(*primals)
    assert_gradients_match(
        call, grads, (y_cotangent, state_cotangent), TOLERANCE[mx.float32], seed + 1
    )


@kinds
@paths
@given(data=st.data())
def test_value_and_grad(kind, impl, data):
    call = data.draw(draw_call(kind, max_length=40), label="call")
    seed = data.draw(seeds, label="seed")
    cotangent = cotangents(call, np.random.default_rng(seed))
    count = len(call.inputs)

    def loss(*primals):
        state = primals[count] if len(primals) > count else None
        y, final = recurops.scan(kind, *primals[:count], state=state, impl=impl)
        return (y * cotangent[0]).sum() + (final * cotangent[1]).sum()

    primals = [x for x in (*call.inputs, call.state) if x is not None]
    value, grads = mx.value_and_grad(loss, argnums=list(range(len(primals))))(*primals)
    y_cotangent, state_cotangent = (to_numpy64(c) for c in cotangent)
    want_y, want_final = spec_numpy(kind, call.inputs, call.state)
    want_value = np.sum(y_cotangent * want_y) + np.sum(state_cotangent * want_final)
    y_size, state_size = spec_sizes(kind, call.inputs, call.state)
    usual_size = np.linalg.norm(y_cotangent) * y_size + np.linalg.norm(state_cotangent) * state_size
    assert_close(value, want_value, TOLERANCE[mx.float32], "loss", usual_size)
    assert_gradients_match(call, grads, cotangent, TOLERANCE[mx.float32], seed + 1)


@kinds
@paths
def test_inputs_are_not_modified(kind, impl):
    call = example_call(kind)
    before = [to_numpy64(x) for x in (*call.inputs, call.state)]
    run(call, impl)
    run_vjp(call, impl, cotangents(call, np.random.default_rng(1)))
    after = [to_numpy64(x) for x in (*call.inputs, call.state)]
    for name, old, new in zip(primal_names(call), before, after, strict=True):
        assert np.array_equal(old, new), f"{name} was modified"


def _strided(x: mx.array) -> mx.array:
    """``x`` as a non-contiguous view (stride 2 in its last axis)."""
    return mx.stack([x, mx.zeros_like(x)], axis=-1)[..., 0]


@kinds
@paths
def test_strided_inputs(kind, impl):
    """Non-contiguous views give the results and gradients of contiguous arrays."""
    call = example_call(kind, length=37)
    strided = replace(
        call, inputs=tuple(map(_strided, call.inputs)), state=_strided(call.state)
    )
    cotangent = cotangents(call, np.random.default_rng(4))
    (y, final), grads = run_vjp(strided, impl, cotangent)
    (want_y, want_final), want_grads = run_vjp(call, impl, cotangent)
    tol = TOLERANCE[mx.float32]
    assert_close(y, want_y, tol, "y")
    assert_close(final, want_final, tol, "final_state")
    for name, grad, want in zip(primal_names(call), grads, want_grads, strict=True):
        assert_close(grad, want, tol, f"d{name}")


@kinds
@paths
def test_keyword_inputs_equal_positional(kind, impl):
    call = example_call(kind)
    y, final = run(call, impl)
    named = call.named()
    first, *_ = call.names
    calls = {
        "all keywords": recurops.scan(kind, state=call.state, impl=impl, **named),
        "mixed": recurops.scan(
            kind, call.inputs[0], state=call.state, impl=impl,
            **{n: x for n, x in named.items() if n != first},
        ),
    }
    for how, (y_kw, final_kw) in calls.items():
        assert np.array_equal(to_numpy64(y_kw), to_numpy64(y)), how
        assert np.array_equal(to_numpy64(final_kw), to_numpy64(final)), how


def test_rglru_by_keyword():
    a = mx.array([[0.5, -1.0], [1.0, 0.0], [-1.1, 2.0]])
    x = mx.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y, final = recurops.scan("rglru", a=a, x=x)
    want = [[1.0, 2.0], [4.0, 4.0], [0.6, 14.0]]
    assert np.allclose(to_numpy64(y), want, rtol=1e-6)
    assert np.allclose(to_numpy64(final), want[-1], rtol=1e-6)

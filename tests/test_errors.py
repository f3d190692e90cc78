"""SPEC section 5: bad input is refused at call time with a precise error.

Each shape error must name the input, the expected symbolic shape, the actual
shape and the disagreeing dimension. Messages are compared after
``_plain`` drops commas and turns parentheses into brackets, so ``[..., L, H]``
and ``[... L H]``, ``(2, 7, 3)`` and ``[2, 7, 3]`` read alike.
"""

import re

import mlx.core as mx
import pytest
from cases import INPUT_NAMES, KIND_NAMES, example_call

import recurops

IMPLS = ("auto", "fallback", "reference")


def _plain(message: str) -> str:
    return message.replace(",", "").replace("(", "[").replace(")", "]")


def _shape(shape) -> str:
    return "[" + " ".join(map(str, shape)) + "]"


def _raises(error: type, kind: str, inputs, state=None, impl: str = "auto", **named) -> str:
    """The plain message of the ``error`` that ``scan`` must raise."""
    with pytest.raises(error) as caught:
        recurops.scan(kind, *inputs, state=state, impl=impl, **named)
    return _plain(str(caught.value))


def _valid(kind: str) -> dict:
    """Valid inputs of ``kind`` by name (EXAMPLE_SIZES, L = 7, batch (2,))."""
    return example_call(kind, with_state=False).named()


# --------------------------------------------------------------------------
# Shapes that break SPEC section 3. The valid sizes (cases.EXAMPLE_SIZES):
# batch [2], L 7; ssd H 4 P 3 G 2 N 5 (A [H N]); gla H 2 K 3 V 5 (g per key
# channel); rglru D 5; rotlru P 3; s6 D 3 N 5.
# (kind, {input: bad shape}, input named, expected symbolic shape, dimension)

SHAPE_ERRORS = [
    ("ssd", {"x": (7, 4)}, "x", "[... L H P]", None),
    ("ssd", {"dt": (2, 7, 3)}, "dt", "[... L H]", "H"),
    ("ssd", {"dt": (2, 6, 4)}, "dt", "[... L H]", "L"),
    ("ssd", {"A": (3,)}, "A", "[H]", "H"),
    ("ssd", {"A": (5, 5)}, "A", "[H N]", "H"),
    ("ssd", {"A": (4, 5, 1)}, "A", "[H N]", None),
    ("ssd", {"B": (2, 7, 2, 6)}, "B", "[... L G N]", "N"),
    ("ssd", {"C": (2, 7, 1, 5)}, "C", "[... L G N]", "G"),
    ("ssd", {"C": (2, 8, 2, 5)}, "C", "[... L G N]", "L"),
    ("gla", {"q": (3,)}, "q", "[... L H K]", None),
    ("gla", {"k": (2, 7, 2, 4)}, "k", "[... L H K]", "K"),
    ("gla", {"v": (2, 7, 3, 5)}, "v", "[... L H V]", "H"),
    ("gla", {"v": (2, 6, 2, 5)}, "v", "[... L H V]", "L"),
    ("gla", {"g": (2, 7, 3)}, "g", "[... L H]", "H"),
    ("gla", {"g": (2, 7, 2, 4)}, "g", "[... L H K]", "K"),
    ("rglru", {"a": (5,)}, "a", "[... L D]", None),
    ("rglru", {"x": (2, 7, 4)}, "x", "[... L D]", "D"),
    ("rglru", {"x": (2, 6, 5)}, "x", "[... L D]", "L"),
    ("rotlru", {"x": (2, 7, 5)}, "x", "[... L 2P]", "2P"),
    ("rotlru", {"x": (2, 7, 8)}, "x", "[... L 2P]", "P"),
    ("rotlru", {"x": (14,)}, "x", "[... L 2P]", None),
    ("rotlru", {"cos": (2, 7, 4)}, "cos", "[... L P]", "P"),
    ("rotlru", {"sin": (2, 6, 3)}, "sin", "[... L P]", "L"),
    ("s6", {"delta": (2, 7, 4)}, "delta", "[... L D]", "D"),
    ("s6", {"A": (3,)}, "A", "[D N]", None),
    ("s6", {"A": (4, 5)}, "A", "[D N]", "D"),
    ("s6", {"A": (2, 3, 5)}, "A", "[D N]", None),
    ("s6", {"B": (2, 7, 6)}, "B", "[... L N]", "N"),
    ("s6", {"C": (2, 6, 5)}, "C", "[... L N]", "L"),
]


def _case_id(case) -> str:
    kind, bad, *_ = case
    return kind + "-" + "-".join(f"{name}{list(shape)}" for name, shape in bad.items())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("kind", "bad", "name", "symbolic", "dimension"),
    SHAPE_ERRORS,
    ids=[_case_id(c) for c in SHAPE_ERRORS],
)
def test_shape_error_names_input_shapes_and_dimension(kind, bad, name, symbolic, dimension, impl):
    inputs = {**_valid(kind), **{n: mx.zeros(shape) for n, shape in bad.items()}}
    message = _raises(ValueError, kind, inputs.values(), impl=impl)
    assert f"'{name}'" in message or f" {name} " in message, f"input {name} not named"
    assert symbolic in message, f"expected shape {symbolic} not given"
    assert _shape(bad[name]) in message, f"actual shape {bad[name]} not given"
    if dimension is not None:
        assert re.search(rf"dimension '?{dimension}\b", message), f"dimension {dimension}"


@pytest.mark.parametrize(
    ("kind", "name", "shape"),
    [
        ("ssd", "dt", (3, 7, 4)),
        ("ssd", "B", (2, 2, 7, 2, 5)),
        ("gla", "v", (1, 7, 2, 5)),
        ("rglru", "x", (7, 5)),
        ("rotlru", "sin", (2, 1, 7, 3)),
        ("s6", "C", (3, 7, 5)),
    ],
)
def test_batch_dimensions_must_agree(kind, name, shape):
    valid = _valid(kind)
    batch = shape[: len(shape) - (valid[name].ndim - 1)]  # valid inputs have batch [2]
    message = _raises(ValueError, kind, {**valid, name: mx.zeros(shape)}.values())
    assert f"'{name}'" in message
    assert _shape(batch) in message, f"its batch dimensions {batch} not given"
    assert "[2]" in message, "the other inputs' batch dimensions not given"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("heads", "groups"), [(4, 3), (3, 2), (1, 2), (6, 4)])
def test_ssd_groups_must_divide_heads(heads, groups, impl):
    x = mx.zeros((7, heads, 3))
    B = C = mx.zeros((7, groups, 5))
    message = _raises(ValueError, "ssd", (x, mx.zeros((7, heads)), mx.zeros(heads), B, C),
                      impl=impl)
    assert re.search(rf"\bG\b.*{groups}", message) and re.search(rf"\bH\b.*{heads}", message)
    assert "divide" in message


# --------------------------------------------------------------------------
# Kinds, input counts and paths


@pytest.mark.parametrize("kind", ["mamba", "SSD", "", None, 3, ["ssd"]])
def test_unknown_kind_names_the_kinds(kind):
    message = _raises(ValueError, kind, (mx.zeros((7, 5)), mx.zeros((7, 5))))
    for known in KIND_NAMES:
        assert known in message


def _in_order(names) -> str:
    return r"\W+".join(re.escape(n) for n in names)


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("change", ("one fewer", "one more", "none"))
def test_wrong_number_of_inputs_names_the_inputs_in_order(kind, change):
    inputs = list(_valid(kind).values())
    inputs = {"one fewer": inputs[:-1], "one more": inputs + inputs[-1:], "none": []}[change]
    message = _raises(TypeError, kind, inputs)
    assert re.search(_in_order(INPUT_NAMES[kind]), message), message


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_keyword_inputs_that_do_not_fit(kind):
    named = _valid(kind)
    first = INPUT_NAMES[kind][0]
    unknown = _raises(TypeError, kind, (), **named, bogus=named[first])
    assert "bogus" in unknown
    twice = _raises(TypeError, kind, (named[first],), **named)
    assert re.search(_in_order(INPUT_NAMES[kind]), twice)


@pytest.mark.parametrize("impl", ["gpu", "Fallback", "", None, "metal"])
def test_unknown_impl_names_the_paths(impl):
    message = _raises(ValueError, "rglru", _valid("rglru").values(), impl=impl)
    for path in ("auto", "kernel", "fallback", "reference"):
        assert path in message


@pytest.mark.skipif(
    mx.default_device().type == mx.DeviceType.gpu, reason="a kernel may run on this GPU"
)
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_forcing_the_kernel_without_a_gpu_says_why(kind):
    with pytest.raises((ValueError, RuntimeError)) as caught:
        recurops.scan(kind, *_valid(kind).values(), impl="kernel")
    message = str(caught.value)
    assert "kernel" in message
    assert "cpu" in message.lower() or "gpu" in message.lower(), "the device is not named"


# --------------------------------------------------------------------------
# Dtypes and the state


NON_FLOATING = (mx.int32, mx.uint8, mx.bool_, mx.int64)


@pytest.mark.parametrize("dtype", NON_FLOATING, ids=str)
@pytest.mark.parametrize(
    ("kind", "name"), [(k, n) for k in KIND_NAMES for n in INPUT_NAMES[k]]
)
def test_non_floating_input_is_a_type_error_naming_it(kind, name, dtype):
    inputs = _valid(kind)
    inputs[name] = inputs[name].astype(dtype)
    message = _raises(TypeError, kind, inputs.values())
    assert f"'{name}'" in message


@pytest.mark.parametrize("dtype", NON_FLOATING, ids=str)
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_non_floating_state_is_a_type_error_naming_it(kind, dtype):
    call = example_call(kind)
    message = _raises(TypeError, kind, call.inputs, state=call.state.astype(dtype))
    assert "state" in message


def _wrong_state_shapes(shape: tuple) -> list[tuple]:
    """Near misses of ``shape``: a dimension off by one, one missing, one extra."""
    return [
        shape[:-1] + (shape[-1] + 1,),
        shape[:1] + (shape[1] - 1 if shape[1] > 1 else 2,) + shape[2:],
        shape[1:],
        (1, *shape),
        shape + (1,),
        (),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_wrong_state_shape_gives_the_expected_shape(kind, impl):
    call = example_call(kind)
    expected = tuple(call.state.shape)
    for shape in _wrong_state_shapes(expected):
        message = _raises(ValueError, kind, call.inputs, state=mx.zeros(shape), impl=impl)
        assert "state" in message
        assert _shape(expected) in message, f"expected {expected} not given for {shape}"
        assert _shape(shape) in message, f"actual {shape} not given"


# --------------------------------------------------------------------------
# Refusals are checked before anything runs and leave the inputs alone


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_errors_leave_inputs_unchanged(kind):
    call = example_call(kind)
    before = [x.tolist() for x in (*call.inputs, call.state)]
    bad_state = mx.zeros((1, *call.state.shape))
    _raises(ValueError, kind, call.inputs, state=bad_state)
    assert [x.tolist() for x in (*call.inputs, call.state)] == before


def test_remembered_shape_checks_still_raise_and_stay_read_only():
    """``bind`` remembers a signature's result: a bad call raises every time,
    a good one reuses its check, and the shared result cannot be changed."""
    from recurops._api import get_kind
    from recurops._kind import bind

    a = mx.ones((2, 5, 4))
    for _ in range(2):
        with pytest.raises(ValueError, match="'x' expected shape"):
            recurops.scan("rglru", a, mx.ones((2, 5, 3)))
    spec = get_kind("rglru")
    first = bind(spec, (a, a))
    assert bind(spec, (mx.zeros((2, 5, 4)), mx.zeros((2, 5, 4)))) is first
    assert bind(spec, (a, a), state=mx.zeros((2, 4))) is not first  # a state is another signature
    with pytest.raises(TypeError):
        first.dims["D"] = 3
    assert first.dims["D"] == 4

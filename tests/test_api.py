"""The public surface besides ``scan``'s numbers: ``explain``, the ``KINDS``
registry and each kind's ``signature()`` (SPEC sections 1 to 3)."""

import re

import mlx.core as mx
import numpy as np
import pytest
from cases import INPUT_NAMES, KIND_NAMES, example_call, run, to_numpy64

import recurops

on_gpu = mx.default_device().type == mx.DeviceType.gpu
cpu_only = pytest.mark.skipif(on_gpu, reason="the default device is a GPU")
kinds = pytest.mark.parametrize("kind", KIND_NAMES)

# SPEC section 3: each input's symbolic shapes and the state's, commas dropped.
SPEC_SHAPES = {
    "ssd": ({"x": ["... L H P"], "dt": ["... L H"], "A": ["H", "H N"],
             "B": ["... L G N"], "C": ["... L G N"]}, "... H P N"),
    "gla": ({"q": ["... L H K"], "k": ["... L H K"], "v": ["... L H V"],
             "g": ["... L H", "... L H K"]}, "... H K V"),
    "rglru": ({"a": ["... L D"], "x": ["... L D"]}, "... D"),
    "rotlru": ({"a": ["... L P"], "cos": ["... L P"], "sin": ["... L P"],
                "x": ["... L 2P"]}, "... 2P"),
    "s6": ({"u": ["... L D"], "delta": ["... L D"], "A": ["D N"], "B": ["... L N"],
            "C": ["... L N"]}, "... D N"),
}


# --------------------------------------------------------------------------
# explain


@kinds
def test_explain_returns_a_path_and_a_reason(kind):
    call = example_call(kind)
    explanation = recurops.explain(kind, *call.inputs, state=call.state)
    path, reason = explanation
    assert (explanation.path, explanation.reason) == (path, reason)
    assert path in ("kernel", "fallback")
    assert isinstance(reason, str) and reason
    assert path in str(explanation) and reason in str(explanation)


@cpu_only
@kinds
def test_explain_on_the_cpu_says_fallback_because_of_the_device(kind):
    call = example_call(kind)
    path, reason = recurops.explain(kind, *call.inputs, state=call.state)
    assert path == "fallback"
    assert "cpu" in reason.lower(), f"the reason does not name the device: {reason!r}"


@kinds
def test_auto_takes_the_path_explain_names(kind):
    call = example_call(kind)
    path, _ = recurops.explain(kind, *call.inputs, state=call.state)
    for got, want in zip(run(call, "auto"), run(call, path), strict=True):
        assert np.array_equal(to_numpy64(got), to_numpy64(want))


@kinds
def test_explain_takes_keyword_inputs_and_no_state(kind):
    call = example_call(kind)
    assert recurops.explain(kind, **call.named()) == recurops.explain(kind, *call.inputs)


@kinds
def test_explain_refuses_what_scan_refuses(kind):
    call = example_call(kind)
    with pytest.raises(ValueError, match="state"):
        recurops.explain(kind, *call.inputs, state=mx.zeros((3,)))
    with pytest.raises(TypeError):
        recurops.explain(kind, *call.inputs[:-1])
    with pytest.raises(ValueError):
        recurops.explain(kind, *call.inputs[:-1], mx.zeros((1, 2, 3, 4, 5, 6)))
    with pytest.raises(ValueError, match=kind):
        recurops.explain("no such kind", *call.inputs)


# --------------------------------------------------------------------------
# The registry


def test_the_registry_holds_the_five_kinds():
    assert set(recurops.KINDS) == set(KIND_NAMES)
    for name, kind in recurops.KINDS.items():
        assert kind.name == name


@kinds
def test_each_kind_declares_its_inputs_in_spec_order(kind):
    spec = recurops.KINDS[kind]
    assert tuple(spec.input_names) == INPUT_NAMES[kind]
    assert callable(spec.reference) and callable(spec.fallback)
    assert hasattr(spec, "kernel")


def _plain(text: str) -> str:
    return text.replace(",", "")


@kinds
def test_signature_gives_inputs_in_order_with_their_shapes_and_the_state(kind):
    signature = _plain(recurops.KINDS[kind].signature())
    shapes, state = SPEC_SHAPES[kind]
    assert kind in signature
    where = []
    for name, variants in shapes.items():
        # the input's name, then its first shape; every other variant after it
        found = re.search(rf"\b{re.escape(name)}\W*\[?{re.escape(variants[0])}\b", signature)
        assert found, f"{name} [{variants[0]}] missing from {signature!r}"
        where.append(found.start())
        for variant in variants[1:]:
            assert variant in signature[found.end():]
    assert where == sorted(where), f"inputs out of order in {signature!r}"
    assert re.search(rf"state\W*\[?{re.escape(state)}\b", signature)


def test_public_names():
    for name in ("scan", "explain", "KINDS", "Explanation", "__version__"):
        assert hasattr(recurops, name)
        assert name in recurops.__all__

"""``recurops.compat`` against the mlx-recurrence 0.3.0 it replaces.

The original's fused kernels need Metal, but its ``*_reference`` token loops
and its legacy ``*_chunked`` scans are pure MLX and run anywhere: every
compat function is compared with them on random inputs, outputs and
gradients of every input, both on shapes the original's kernels accept
(``L`` and the lane dimension multiples of 32) and on shapes they reject.
Where Metal is available the original's kernels are compared directly too.
"""

from __future__ import annotations

import inspect

import mlx.core as mx
import numpy as np
import pytest

import recurops.compat as compat

mr = pytest.importorskip("mlx_recurrence", reason="needs mlx-recurrence==0.3.0 (compat-test extra)")
import mlx_recurrence.legacy as mr_legacy  # noqa: E402

HAS_METAL = mx.metal.is_available()

# (batch, L, lane): the lane dimension is Dh for SSD/GLA and D for the LRUs.
ACCEPTED = (2, 96, 32)  # what mlx-recurrence's kernels take
REJECTED = (2, 71, 6)  # L % 32 != 0 and lane % 32 != 0: they refuse it
SHAPES = pytest.mark.parametrize("shape", [ACCEPTED, REJECTED], ids=["accepted", "rejected"])


def _rng(seed):
    return np.random.default_rng(seed)


def _arr(a):
    return mx.array(np.asarray(a, np.float32))


def ssd_inputs(shape, seed=0, H=2, N=4):
    b, L, dh = shape
    r = _rng(seed)
    return (
        _arr(r.normal(size=(b, L, H, dh))),  # u
        _arr(r.uniform(0.01, 0.2, (b, L, H))),  # delta
        _arr(r.normal(size=(b, L, H, N))),  # B
        _arr(r.normal(size=(b, L, H, N))),  # C
        _arr(-r.uniform(0.1, 1.0, (H, N))),  # A_neg
    )


def gla_inputs(shape, seed=0, H=2):
    b, L, dh = shape
    r = _rng(seed)
    return (
        _arr(r.normal(size=(b, L, H, dh)) / np.sqrt(dh)),
        _arr(r.normal(size=(b, L, H, dh)) / np.sqrt(dh)),
        _arr(r.normal(size=(b, L, H, dh))),
        _arr(r.uniform(0.6, 0.99, (b, L, H))),
    )


def rglru_inputs(shape, seed=0):
    b, L, d = shape
    r = _rng(seed)
    return _arr(r.uniform(-0.95, 0.95, (b, L, d))), _arr(r.normal(size=(b, L, d)))


def rotlru_inputs(shape, seed=0):
    b, L, d = shape
    r = _rng(seed)
    p = (d + 1) // 2
    theta = r.uniform(-np.pi, np.pi, (b, L, p))
    return (
        _arr(r.uniform(-0.95, 0.95, (b, L, p))),
        _arr(np.cos(theta)),
        _arr(np.sin(theta)),
        _arr(r.normal(size=(b, L, 2 * p))),
    )


def s6_inputs(shape, seed=0, N=4):
    b, L, d = shape
    r = _rng(seed)
    return (
        _arr(r.normal(size=(b, L, d))),  # u
        _arr(r.uniform(0.01, 0.2, (b, L, d))),  # delta
        _arr(r.normal(size=(b, L, N))),  # B_in
        _arr(r.normal(size=(b, L, N))),  # C_in
        _arr(-r.uniform(0.1, 1.0, (d, N))),  # A_neg
    )


# name -> (compat function, original pure-MLX function it must match, inputs)
PAIRS = {
    "ssd_scan": (compat.ssd_scan, mr.ssd_scan_reference, ssd_inputs),
    "ssd_scan_reference": (compat.ssd_scan_reference, mr.ssd_scan_reference, ssd_inputs),
    "gla_scan": (compat.gla_scan, mr.gla_scan_reference, gla_inputs),
    "gla_scan_reference": (compat.gla_scan_reference, mr.gla_scan_reference, gla_inputs),
    "rglru_scan": (compat.rglru_scan, mr.rglru_scan_reference, rglru_inputs),
    "rglru_scan_reference": (compat.rglru_scan_reference, mr.rglru_scan_reference, rglru_inputs),
    "rotlru_scan": (compat.rotlru_scan, mr.rotlru_scan_reference, rotlru_inputs),
    "rotlru_scan_reference": (
        compat.rotlru_scan_reference, mr.rotlru_scan_reference, rotlru_inputs
    ),
    "selective_scan_metal": (compat.selective_scan_metal, mr.selective_scan_chunked, s6_inputs),
    "selective_scan_chunked": (
        compat.selective_scan_chunked, mr.selective_scan_chunked, s6_inputs
    ),
    "gla_scan_metal": (compat.gla_scan_metal, mr.gla_scan_chunked, gla_inputs),
    "gla_scan_chunked": (compat.gla_scan_chunked, mr.gla_scan_chunked, gla_inputs),
}

WITH_STATE = {
    "ssd": (compat.ssd_scan_with_state, compat.ssd_scan, ssd_inputs),
    "gla": (compat.gla_scan_with_state, compat.gla_scan, gla_inputs),
    "rglru": (compat.rglru_scan_with_state, compat.rglru_scan, rglru_inputs),
    "rotlru": (compat.rotlru_scan_with_state, compat.rotlru_scan, rotlru_inputs),
}


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def assert_close(a, b, tol=1e-4, what=""):
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert rel_err(a, b) < tol, (what, rel_err(a, b))


def values_and_grads(fn, inputs, w):
    argnums = tuple(range(len(inputs)))

    def loss(*args):
        return mx.sum(fn(*args) * w)

    y = fn(*inputs)
    grads = mx.grad(loss, argnums=argnums)(*inputs)
    mx.eval(y, grads)
    return y, grads


# --------------------------------------------------------------------------- API surface


def test_every_public_name_is_there():
    missing = [name for name in mr.__all__ if not hasattr(compat, name)]
    assert not missing
    assert set(compat.__all__) >= set(mr.__all__)
    assert compat.DEFAULT_SEG == mr.DEFAULT_SEG == 32


@pytest.mark.parametrize("name", [n for n in mr.__all__ if callable(getattr(mr, n))])
def test_same_signature(name):
    ours, theirs = inspect.signature(getattr(compat, name)), inspect.signature(getattr(mr, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]


@pytest.mark.parametrize("module", ["ssd", "gla", "rglru", "rotlru", "legacy"])
def test_submodules_mirror_the_original(module):
    import importlib

    theirs = importlib.import_module(f"mlx_recurrence.{module}")
    ours = importlib.import_module(f"recurops.compat.{module}")
    public = getattr(theirs, "__all__", None) or [
        n for n, f in vars(theirs).items()
        if inspect.isfunction(f) and f.__module__ == theirs.__name__
    ]
    public = [n for n in public if not n.startswith("_")]
    assert public and all(hasattr(ours, n) for n in public)


# --------------------------------------------------------------------------- values, gradients


@SHAPES
@pytest.mark.parametrize("name", list(PAIRS))
def test_matches_original(name, shape):
    ours, theirs, make = PAIRS[name]
    inputs = make(shape)
    w = mx.array(_rng(9).normal(size=theirs(*inputs).shape).astype(np.float32))
    y, g = values_and_grads(ours, inputs, w)
    y_ref, g_ref = values_and_grads(theirs, inputs, w)
    assert y.dtype == y_ref.dtype == mx.float32
    assert_close(y, y_ref, what="y")
    for i, (a, b) in enumerate(zip(g, g_ref, strict=True)):
        assert_close(a, b, what=f"grad {i}")


@SHAPES
@pytest.mark.parametrize("kind", list(WITH_STATE))
def test_final_state_layout(kind, shape):
    """The final state is the original's (the state after the last step, its layout)."""
    with_state, plain, make = WITH_STATE[kind]
    inputs = make(shape)
    y, state = with_state(*inputs)
    assert_close(y, plain(*inputs))
    assert state.dtype == mx.float32
    b, L = shape[:2]
    if kind == "ssd":  # [B, H, Dh, N]: y[:, -1, h, d] = sum_n C[:, -1, h, n] * state[b, h, d, n]
        u, _, _, C, A_neg = inputs
        assert state.shape == (b, u.shape[2], u.shape[3], A_neg.shape[1])
        last = (state * C[:, -1, :, None, :]).sum(-1)
    elif kind == "gla":  # [B, H, Dh, Dh]: o[j] = sum_i q[i] * S[i, j]
        q = inputs[0]
        assert state.shape == (b, q.shape[2], q.shape[3], inputs[2].shape[3])
        last = (q[:, -1, :, :, None] * state).sum(-2)
    else:  # [B, D]: y_t = h_t
        assert state.shape == (b, y.shape[-1])
        last = state
    assert_close(last, y[:, -1], what="y[-1] from the final state")


@pytest.mark.parametrize("kind", list(WITH_STATE))
def test_chunked_prefill(kind):
    """Chaining through the final state equals one scan (recurops.scan takes it as state=)."""
    import recurops

    with_state, _, make = WITH_STATE[kind]
    inputs = make((1, 9, 6), seed=3)
    order = {"ssd": (0, 1, 4, 2, 3)}.get(kind, tuple(range(len(inputs))))
    args = [inputs[i] for i in order]
    head = [a if a.ndim == 2 else a[:, :4] for a in args]
    tail = [a if a.ndim == 2 else a[:, 4:] for a in args]
    y, state = with_state(*inputs)
    _, s1 = recurops.scan(kind, *head)
    y2, s2 = recurops.scan(kind, *tail, state=s1)
    assert_close(y2, y[:, 4:])
    assert_close(s2, state)


@pytest.mark.parametrize("kind", ["rglru", "rotlru"])
def test_gradient_through_final_state(kind):
    """The state's cotangent is not dropped (mlx-recurrence's kernels dropped it)."""
    with_state, _, make = WITH_STATE[kind]
    reference = PAIRS[f"{kind}_scan"][1]
    inputs = make(REJECTED, seed=5)
    w = mx.array(_rng(2).normal(size=(REJECTED[0], with_state(*inputs)[1].shape[-1])))
    w = w.astype(mx.float32)
    argnums = tuple(range(len(inputs)))
    ours = mx.grad(lambda *a: (with_state(*a)[1] * w).sum(), argnums)(*inputs)
    theirs = mx.grad(lambda *a: (reference(*a)[:, -1] * w).sum(), argnums)(*inputs)
    for a, b in zip(ours, theirs, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_narrow_inputs_give_float32_like_the_original(dtype):
    inputs = tuple(x.astype(dtype) for x in ssd_inputs(REJECTED))
    y = compat.ssd_scan(*inputs)
    y_ref = mr.ssd_scan_reference(*inputs)
    assert y.dtype == y_ref.dtype == mx.float32
    assert_close(y, y_ref, tol=2e-2)


def test_seg_is_accepted_but_not_a_limit():
    inputs = rglru_inputs((1, 10, 3))
    base = compat.rglru_scan(*inputs)
    for seg in (1, 7, 32, 4096):
        assert_close(compat.rglru_scan(*inputs, seg=seg), base)
        assert_close(compat.rglru_scan_with_state(*inputs, seg)[0], base)
    for bad in (0, -32, 2.5):
        with pytest.raises(ValueError, match="seg"):
            compat.rglru_scan(*inputs, seg=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        compat.gla_scan_chunked(*gla_inputs((1, 4, 3)), chunk_size=0)


def test_bad_shapes_still_raise():
    u, delta, B, C, A_neg = ssd_inputs(REJECTED)
    with pytest.raises(ValueError, match="ssd"):
        compat.ssd_scan(u, delta, B[..., :3], C, A_neg)
    a, cs, sn, x = rotlru_inputs(REJECTED)
    with pytest.raises(ValueError):
        compat.rotlru_scan(a, cs, sn, x[..., :-2])


def test_extra_batch_dimensions():
    inputs = gla_inputs((2, 5, 4))
    y = compat.gla_scan(*inputs)
    folded = compat.gla_scan(*(x.reshape(1, *x.shape) for x in inputs))
    assert_close(folded[0], y)


def test_other_array_libraries_pass_through_scan():
    a, x = rglru_inputs(REJECTED)
    y, state = compat.rglru_scan_with_state(np.array(a), np.array(x))
    assert isinstance(y, np.ndarray) and isinstance(state, np.ndarray)
    assert_close(y, compat.rglru_scan(a, x))


# --------------------------------------------------------------------------- chassis helpers


@pytest.mark.parametrize(
    "args", [(64, 32, 32), (64, 32, 64, "Dh"), (65, 32, 32), (64, 32, 30, "Dh"), (64, 0, 32)]
)
def test_check_segment_shape_behaves_like_the_original(args):
    outcomes = []
    for fn in (compat.check_segment_shape, mr.check_segment_shape):
        try:
            fn(*args)
            outcomes.append(None)
        except ValueError as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]


def test_parity_check_agrees_with_the_original(capsys):
    inputs = rglru_inputs(REJECTED)
    names = ["a", "x"]
    ok, report = compat.parity_check(
        compat.rglru_scan, mr.rglru_scan_reference, inputs, names, (0, 1), label="rglru"
    )
    ok_orig, report_orig = mr.parity_check(
        compat.rglru_scan, mr.rglru_scan_reference, inputs, names, (0, 1), label="rglru"
    )
    assert ok and ok_orig
    assert report.keys() == report_orig.keys()
    for key in report:
        assert report[key]["abs"] == pytest.approx(report_orig[key]["abs"], abs=1e-6)
    out = capsys.readouterr().out.splitlines()
    assert out[: len(out) // 2] == out[len(out) // 2 :]
    bad, _ = compat.parity_check(
        lambda a, x: 2 * compat.rglru_scan(a, x), mr.rglru_scan_reference, inputs, names,
        (1,), verbose=False,
    )
    assert not bad


def test_get_or_build_kernel():
    source = "uint i = thread_position_in_grid.x; out[i] = inp[i] * 2.0f;"
    if not HAS_METAL:
        with pytest.raises(RuntimeError, match="Metal"):
            compat.get_or_build_kernel("recurops_compat_double", ["inp"], ["out"], source)
        return
    k = compat.get_or_build_kernel("recurops_compat_double", ["inp"], ["out"], source)
    assert compat.get_or_build_kernel("recurops_compat_double", ["inp"], ["out"], source) is k
    x = mx.arange(8, dtype=mx.float32)
    (out,) = k(inputs=[x], output_shapes=[(8,)], output_dtypes=[mx.float32],
               grid=(8, 1, 1), threadgroup=(8, 1, 1))
    assert np.allclose(out, 2 * np.arange(8))


# --------------------------------------------------------------------------- Metal only


METAL_PAIRS = {
    "ssd_scan_with_state": (compat.ssd_scan_with_state, mr.ssd_scan_with_state, ssd_inputs),
    "gla_scan_with_state": (compat.gla_scan_with_state, mr.gla_scan_with_state, gla_inputs),
    "rglru_scan_with_state": (
        compat.rglru_scan_with_state, mr.rglru_scan_with_state, rglru_inputs
    ),
    "rotlru_scan_with_state": (
        compat.rotlru_scan_with_state, mr.rotlru_scan_with_state, rotlru_inputs
    ),
    "selective_scan_metal": (
        compat.selective_scan_metal, mr_legacy.selective_scan_metal, s6_inputs
    ),
    "gla_scan_metal": (compat.gla_scan_metal, mr_legacy.gla_scan_metal, gla_inputs),
}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_METAL, reason="mlx-recurrence's kernels need Metal")
@pytest.mark.parametrize("name", list(METAL_PAIRS))
def test_matches_original_kernels(name):
    ours, theirs, make = METAL_PAIRS[name]
    inputs = make((2, 64, 32))
    out, ref = ours(*inputs), theirs(*inputs)
    out, ref = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == b.dtype
        assert_close(a, b, tol=1e-3)

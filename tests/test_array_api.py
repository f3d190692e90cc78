"""``recurops.scan`` with arrays of any array-API library (SPEC sections 5 and 6).

The same cases run through every installed namespace (MLX, NumPy and
array-api-strict always; PyTorch and JAX where installed) and must give the
values MLX gives for the same numbers, as arrays of the caller's library,
dtype and device. PyTorch gradients cross the bridge; JAX transformations
are refused with a clear error.
"""

from __future__ import annotations

import importlib.util

import array_api_compat
import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import recurops
from recurops import _interop

xs = pytest.importorskip("array_api_strict")
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None


# --------------------------------------------------------------------------- inputs


def numpy_inputs(kind, rng, batch=(2,), L=5, with_state=False):
    """Inputs of ``kind`` in its domain as float64 NumPy arrays, and a state or None."""
    lead = (*batch, L)
    normal = rng.standard_normal
    if kind == "ssd":
        H, G, P, N = 4, 2, 3, 2
        inputs = (normal(lead + (H, P)), rng.uniform(0, 1, lead + (H,)),
                  -rng.uniform(0, 1, (H, N)), normal(lead + (G, N)), normal(lead + (G, N)))
        state = (*batch, H, P, N)
    elif kind == "gla":
        H, K, V = 2, 3, 4
        inputs = (normal(lead + (H, K)), normal(lead + (H, K)), normal(lead + (H, V)),
                  rng.uniform(0, 1, lead + (H,)))
        state = (*batch, H, K, V)
    elif kind == "rglru":
        inputs = (rng.uniform(-1, 1, lead + (3,)), normal(lead + (3,)))
        state = (*batch, 3)
    elif kind == "rotlru":
        inputs = (rng.uniform(-1, 1, lead + (2,)), normal(lead + (2,)), normal(lead + (2,)),
                  normal(lead + (4,)))
        state = (*batch, 4)
    else:  # s6
        D, N = 3, 2
        inputs = (normal(lead + (D,)), rng.uniform(0, 1, lead + (D,)),
                  -rng.uniform(0, 1, (D, N)), normal(lead + (N,)), normal(lead + (N,)))
        state = (*batch, D, N)
    return inputs, (normal(state) if with_state else None)


# --------------------------------------------------------------------------- namespaces


class Lib:
    """How to make, read and recognise arrays of one library."""

    def __init__(self, name, make, read, array_type, dtypes, device=None):
        self.name, self.make, self.read = name, make, read
        self.array_type, self.dtypes, self.device = array_type, dtypes, device

    def __repr__(self):
        return self.name


def _dtype_name(x) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


def _narrow(a, dtype):
    """NumPy has no bfloat16: those inputs start from float32."""
    return a.astype("float32" if dtype == "bfloat16" else dtype)


def _libs():
    libs = [
        Lib("mlx", lambda a, d: mx.array(_narrow(a, d), dtype=getattr(mx, d)),
            lambda x: np.array(x.astype(mx.float32) if x.dtype == mx.bfloat16 else x),
            mx.array, ("float32", "float64", "float16", "bfloat16")),
        Lib("numpy", lambda a, d: a.astype(d), np.asarray, np.ndarray,
            ("float32", "float64", "float16")),
        Lib("array_api_strict", lambda a, d: xs.asarray(a.astype(d)), np.from_dlpack,
            type(xs.asarray(0.0)), ("float32", "float64")),  # the standard has no float16
        Lib("array_api_strict/device1",
            lambda a, d: xs.asarray(a.astype(d), device=xs.Device("device1")),
            lambda x: np.from_dlpack(xs.asarray(x, device=xs.Device("CPU_DEVICE"))),
            type(xs.asarray(0.0)), ("float32",), device=xs.Device("device1")),
    ]
    if HAS_TORCH:
        import torch

        def make_torch(a, d):
            return torch.from_numpy(_narrow(a, d)).to(getattr(torch, d))

        def read_torch(x):
            x = x.detach()
            return (x.float() if x.dtype == torch.bfloat16 else x).numpy()

        libs.append(Lib("torch", make_torch, read_torch,
                        torch.Tensor, ("float32", "float64", "float16", "bfloat16")))
    if HAS_JAX:
        import jax.numpy as jnp

        libs.append(Lib("jax", lambda a, d: jnp.asarray(a.astype("float32")).astype(d),
                        lambda x: np.asarray(x.astype(jnp.float32)), type(jnp.zeros(1)),
                        ("float32", "bfloat16")))
    return libs


LIBS = _libs()
FOREIGN = [lib for lib in LIBS if lib.name != "mlx"]
BY_NAME = {lib.name: lib for lib in LIBS}
KINDS = tuple(recurops.KINDS)


def expected(kind, inputs, state, dtype):
    """What MLX itself returns for the same numbers, as float NumPy arrays."""
    lib = LIBS[0]
    y, s = recurops.scan(kind, *(lib.make(a, dtype) for a in inputs),
                         state=None if state is None else lib.make(state, _state_dtype(dtype)))
    return lib.read(y), lib.read(s)


def _state_dtype(dtype):
    return "float64" if dtype == "float64" else "float32"


def check_call(lib, kind, dtype, inputs, state):
    args = [lib.make(a, dtype) for a in inputs]
    st0 = None if state is None else lib.make(state, _state_dtype(dtype))
    y, s = recurops.scan(kind, *args, state=st0)
    for out, want_dtype in ((y, dtype), (s, _state_dtype(dtype))):
        assert isinstance(out, lib.array_type), type(out)
        assert _dtype_name(out) == want_dtype
        if lib.name != "mlx":
            assert array_api_compat.array_namespace(out) is array_api_compat.array_namespace(
                args[0])
            assert array_api_compat.device(out) == array_api_compat.device(args[0])
    y_mx, s_mx = expected(kind, inputs, state, dtype)
    np.testing.assert_array_equal(lib.read(y), y_mx)
    np.testing.assert_array_equal(lib.read(s), s_mx)
    return args, st0, y, s


# --------------------------------------------------------------------------- values and types


@pytest.mark.parametrize("lib", LIBS, ids=repr)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "state"])
def test_every_kind_every_namespace(lib, kind, with_state):
    inputs, state = numpy_inputs(kind, np.random.default_rng(0), with_state=with_state)
    check_call(lib, kind, "float32", inputs, state)


@pytest.mark.parametrize(
    "lib, dtype", [(lib, d) for lib in LIBS for d in lib.dtypes if d != "float32"], ids=repr
)
def test_dtypes_are_kept(lib, dtype):
    inputs, state = numpy_inputs("ssd", np.random.default_rng(1), with_state=True)
    check_call(lib, "ssd", dtype, inputs, state)


@given(
    kind=st.sampled_from(KINDS),
    lib=st.sampled_from(FOREIGN),
    batch=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    length=st.integers(0, 6),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_foreign_matches_mlx(kind, lib, batch, length, with_state, seed):
    inputs, state = numpy_inputs(kind, np.random.default_rng(seed), batch, length, with_state)
    check_call(lib, kind, "float32", inputs, state)


def test_keywords_and_chunked_calls():
    inputs, _ = numpy_inputs("rglru", np.random.default_rng(2), L=6)
    a, x = (v.astype(np.float32) for v in inputs)
    y, s = recurops.scan("rglru", a=a, x=x)
    _, s1 = recurops.scan("rglru", a[:, :4], x[:, :4])
    y2, s2 = recurops.scan("rglru", a[:, 4:], x=x[:, 4:], state=s1)
    assert isinstance(y2, np.ndarray) and isinstance(s2, np.ndarray)
    np.testing.assert_allclose(y2, y[:, 4:], rtol=1e-6)
    np.testing.assert_allclose(s2, s, rtol=1e-6)


def test_results_do_not_alias_inputs_or_each_other():
    inputs, state = numpy_inputs("rglru", np.random.default_rng(3), batch=(1,), with_state=True)
    a, x, s0 = (v.astype(np.float32) for v in (*inputs, state))
    copies = [v.copy() for v in (a, x, s0)]
    y, s = recurops.scan("rglru", a, x, state=s0)
    final = s.copy()
    y += 1.0  # the results are ordinary arrays the caller may write to
    np.testing.assert_array_equal(s, final)
    for v, c in zip((a, x, s0), copies, strict=True):
        np.testing.assert_array_equal(v, c)


def test_mlx_inputs_take_the_fast_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the bridge ran for MLX inputs")

    monkeypatch.setattr(_interop, "bridged", refuse)
    monkeypatch.setattr(_interop, "namespace", refuse)
    monkeypatch.setattr(array_api_compat, "array_namespace", refuse)
    inputs, state = numpy_inputs("gla", np.random.default_rng(4), with_state=True)
    args = [mx.array(v.astype(np.float32)) for v in inputs]
    y, s = recurops.scan("gla", *args, state=mx.array(state.astype(np.float32)))
    assert isinstance(y, mx.array) and isinstance(s, mx.array)
    assert recurops.explain("gla", *args).path in ("kernel", "fallback")


def test_explain_accepts_foreign_arrays():
    inputs, _ = numpy_inputs("s6", np.random.default_rng(5))
    args = [xs.asarray(v.astype(np.float32)) for v in inputs]
    explanation = recurops.explain("s6", *args)
    assert explanation.path == recurops.explain("s6", *map(mx.array, args)).path
    assert "array_api_strict" in explanation.reason


# --------------------------------------------------------------------------- bad input


def _mixes():
    inputs, state = numpy_inputs("rglru", np.random.default_rng(6), with_state=True)
    a, x, s = (v.astype(np.float32) for v in (*inputs, state))
    mixes = [
        ("numpy+mlx", (a, mx.array(x)), None),
        ("mlx+numpy", (mx.array(a), x), None),
        ("numpy+strict", (a, xs.asarray(x)), None),
        ("mlx inputs, numpy state", (mx.array(a), mx.array(x)), s),
        ("numpy inputs, strict state", (a, x), xs.asarray(s)),
    ]
    if HAS_TORCH:
        import torch

        mixes.append(("torch+numpy", (torch.from_numpy(a), x), None))
    if HAS_JAX:
        import jax.numpy as jnp

        mixes.append(("jax+mlx", (jnp.asarray(a), mx.array(x)), None))
    return mixes


@pytest.mark.parametrize("case", _mixes(), ids=lambda c: c[0])
def test_two_libraries_in_one_call_raise_type_error(case):
    _, inputs, state = case
    with pytest.raises(TypeError, match="more than one array library"):
        recurops.scan("rglru", *inputs, state=state)
    with pytest.raises(TypeError, match="more than one array library"):
        recurops.explain("rglru", *inputs, state=state)


@pytest.mark.parametrize("lib", FOREIGN, ids=repr)
def test_errors_are_the_same_as_for_mlx(lib):
    inputs, state = numpy_inputs("ssd", np.random.default_rng(7), with_state=True)
    args = [lib.make(a, "float32") for a in inputs]
    mx_args = [mx.array(a.astype(np.float32)) for a in inputs]
    bad_b, mx_bad_b = list(args), list(mx_args)  # B with N=1, C with N=2
    bad_b[3] = lib.make(inputs[3][..., :1], "float32")
    mx_bad_b[3] = mx.array(inputs[3][..., :1].astype(np.float32))
    with pytest.raises(ValueError) as ours:
        recurops.scan("ssd", *bad_b)
    with pytest.raises(ValueError) as theirs:
        recurops.scan("ssd", *mx_bad_b)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="'state' expected shape"):
        recurops.scan("ssd", *args, state=lib.make(state[..., :1], "float32"))


def test_non_arrays_and_non_floating_dtypes_raise_type_error():
    inputs, _ = numpy_inputs("rglru", np.random.default_rng(8))
    a, x = (v.astype(np.float32) for v in inputs)
    with pytest.raises(TypeError, match="input 'x' must be an array, got list"):
        recurops.scan("rglru", a, x.tolist())
    with pytest.raises(TypeError, match="'state' must be an array"):
        recurops.scan("rglru", a, x, state=0.0)
    with pytest.raises(TypeError, match="'a' must be floating"):
        recurops.scan("rglru", a.astype(np.int32), x)
    with pytest.raises(TypeError, match="'a' must be floating"):
        recurops.scan("rglru", xs.asarray(a.astype(np.int64)), xs.asarray(x))


# --------------------------------------------------------------------------- PyTorch autodiff


def _torch_loss_and_mlx_grads(kind, dtype, seed=0):
    import torch

    inputs, state = numpy_inputs(kind, np.random.default_rng(seed), L=6, with_state=True)
    rng = np.random.default_rng(seed + 1)
    y_mx, s_mx = expected(kind, inputs, state, dtype)
    wy, ws = rng.standard_normal(y_mx.shape), rng.standard_normal(s_mx.shape)

    mlx = LIBS[0]
    primals = [mlx.make(a, dtype) for a in inputs] + [mlx.make(state, _state_dtype(dtype))]

    def loss(*p):
        y, s = recurops.scan(kind, *p[:-1], state=p[-1])
        return (y.astype(mx.float32) * mx.array(wy, mx.float32)).sum() + (
            s * mx.array(ws, mx.float32)).sum()

    want = mx.grad(loss, argnums=tuple(range(len(primals))))(*primals)

    tensors = [BY_NAME["torch"].make(a, dtype) for a in inputs]
    tensors.append(torch.tensor(state, dtype=getattr(torch, _state_dtype(dtype))))
    for t in tensors:
        t.requires_grad_(True)
    y, s = recurops.scan(kind, *tensors[:-1], state=tensors[-1])
    total = (y.float() * torch.tensor(wy, dtype=torch.float32)).sum() + (
        s.float() * torch.tensor(ws, dtype=torch.float32)).sum()
    return tensors, total, want


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_gradients_cross_the_bridge(kind, dtype):
    tensors, total, want = _torch_loss_and_mlx_grads(kind, dtype)
    total.backward()
    for t, g in zip(tensors, want, strict=True):
        assert t.grad is not None and t.grad.dtype == t.dtype and t.grad.shape == t.shape
        np.testing.assert_allclose(t.grad.float().numpy(), LIBS[0].read(g), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
def test_torch_partial_requires_grad_and_no_grad():
    import torch

    tensors, total, want = _torch_loss_and_mlx_grads("gla", "float32", seed=3)
    (g_state,) = torch.autograd.grad(total, [tensors[-1]])
    np.testing.assert_allclose(g_state.numpy(), np.array(want[-1]), rtol=1e-5, atol=1e-6)

    inputs, _ = numpy_inputs("rglru", np.random.default_rng(4))
    a, x = (torch.tensor(v, dtype=torch.float32, requires_grad=i == 1)
            for i, v in enumerate(inputs))
    y, _ = recurops.scan("rglru", a, x)
    y.sum().backward()
    assert a.grad is None and x.grad is not None
    with torch.no_grad():
        y, s = recurops.scan("rglru", a, x)
    assert y.grad_fn is None and not y.requires_grad


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed")
def test_torch_double_backward_is_refused():
    import torch

    inputs, _ = numpy_inputs("rglru", np.random.default_rng(5))
    a, x = (torch.tensor(v, dtype=torch.float32, requires_grad=True) for v in inputs)
    y, _ = recurops.scan("rglru", a, x)
    (ga,) = torch.autograd.grad((y**2).sum(), [a], create_graph=True)
    with pytest.raises(RuntimeError):
        ga.sum().backward()


# --------------------------------------------------------------------------- JAX: forward only


@pytest.mark.skipif(not HAS_JAX, reason="JAX not installed")
@pytest.mark.parametrize("transform", ["grad", "jit", "vmap"])
def test_jax_transformations_are_refused(transform):
    import jax
    import jax.numpy as jnp

    inputs, _ = numpy_inputs("rglru", np.random.default_rng(6))
    a, x = (jnp.asarray(v.astype(np.float32)) for v in inputs)

    def f(a):
        return recurops.scan("rglru", a, x)[0].sum()

    fn = {"grad": jax.grad(f), "jit": jax.jit(f), "vmap": jax.vmap(f)}[transform]
    with pytest.raises(TypeError, match="JAX tracer"):
        fn(a)
    assert np.isfinite(float(f(a)))  # concrete arrays: forward values work

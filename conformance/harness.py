"""Shared machinery of the conformance suite: pins, data, and the comparison itself.

Every test states one mapping of conventions as two functions of the same raw
inputs: ``ours`` (built on :func:`recurops.scan`) and ``theirs`` (the pinned
implementation, called as its users call it). :func:`conform` runs both,
compares every output and, through one vector-Jacobian product with the same
random cotangents, the gradient with respect to every floating input. The
tolerance is SPEC section 4's for float32: relative error (norm of the
difference over the norm of the reference) under ``RTOL``. It is never widened
per test; a test whose reference is only accurate on part of the domain draws
its inputs from that part and says why.

When a comparison fails, the message also gives both sides' error against a
float64 run of ``ours`` on recurops' reference path, so the report says which
side is wrong.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Sequence

import mlx.core as mx
import numpy as np
import pytest

#: SPEC section 4: float32 relative error bound for values and gradients.
RTOL = 1e-4

#: Where the exact result is identically zero (e.g. d/dA at L = 1 from a zero state) there
#: is no relative error; both sides must then be zero up to float32 rounding of O(1) inputs.
ZERO_ATOL = 1e-6

#: The implementations compared against, pinned (the nox session installs exactly these).
PINS = {
    "mlx-recurrence": "0.3.0",
    "mlx-lm": "0.32.2",
    "fla-core": "0.6.0",
}
# PyTorch only runs fla's references: any version will do (the nox session installs
# torch==2.13.0, CPU build).


def pinned(distribution: str, module: str):
    """Import ``module`` of the pinned ``distribution``: skip if absent, fail if another version.

    A comparison is only meaningful against the version whose conventions the
    docs describe, so a different version is an error, not a skip.
    """
    mod = pytest.importorskip(module, reason=f"{distribution} is not installed")
    version = importlib.metadata.version(distribution).split("+")[0]
    if version != PINS[distribution]:
        pytest.fail(
            f"conformance is pinned to {distribution}=={PINS[distribution]}, found {version}; "
            "run it through `nox -s conformance`",
            pytrace=False,
        )
    return mod


def import_mlx_lm(*modules: str):
    """Import ``mlx_lm.models.<name>`` for each name, from the pinned mlx-lm.

    ``import mlx_lm`` runs its ``__init__``, which imports the model-loading
    utilities and so transformers and huggingface_hub. The model files need only
    MLX; where that import fails, the package is registered without running its
    ``__init__`` and the model modules are imported from it.
    """
    try:
        pinned("mlx-lm", "mlx_lm")
    except pytest.skip.Exception:
        if importlib.util.find_spec("mlx_lm") is None:
            raise
        import sys

        spec = importlib.util.find_spec("mlx_lm")
        sys.modules["mlx_lm"] = importlib.util.module_from_spec(spec)
        pinned("mlx-lm", "mlx_lm")
    return [importlib.import_module(f"mlx_lm.models.{m}") for m in modules]


def load_fla_naive(relative: str):
    """Load one of fla's pure-PyTorch naive modules (e.g. ``"gla/naive.py"``) on the CPU.

    ``import fla.ops.gla.naive`` runs ``fla/ops/__init__.py``, which imports
    every Triton kernel of the package and so needs ``triton`` (and, at run
    time, a GPU). The naive modules themselves import only ``torch`` and
    ``einops``, so when the package import fails this loads the file by path.
    Skips when torch or fla cannot be imported.
    """
    pytest.importorskip("torch", reason="fla's naive references need PyTorch")
    pinned("fla-core", "fla")
    pytest.importorskip("einops", reason="fla's naive modules need einops")
    dotted = "fla.ops." + relative.removesuffix(".py").replace("/", ".")
    try:
        return importlib.import_module(dotted)
    except Exception:  # ImportError without Triton; anything Triton raises without a GPU
        pass
    spec = importlib.util.find_spec("fla")
    path = os.path.join(os.path.dirname(spec.origin), "ops", relative)
    loader = importlib.util.spec_from_file_location(f"_conformance_{dotted}", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- data


def gen(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def normal(rng: np.random.Generator, *shape, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def uniform(rng: np.random.Generator, lo: float, hi: float, *shape) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def with_exact(rng: np.random.Generator, x: np.ndarray, values: Sequence[float], p: float):
    """``x`` with a fraction ``p`` of its entries replaced by exact ``values`` (e.g. 0 and 1)."""
    x = x.copy()
    hit = rng.random(x.shape) < p
    x[hit] = rng.choice(np.asarray(values, dtype=np.float32), size=int(hit.sum()))
    return x


# --------------------------------------------------------------------------- comparison


def rel_err(actual, reference) -> float:
    """norm(actual - reference) / norm(reference), in float64 (absolute when the norm is 0)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    assert a.shape == r.shape, f"shape {a.shape} != reference shape {r.shape}"
    scale = np.linalg.norm(r)
    diff = np.linalg.norm(a - r)
    return float(diff / scale) if scale > 0 else float(diff)


def _numpy(x) -> np.ndarray:
    if isinstance(x, mx.array):
        return np.array(x).astype(np.float64)  # float64 MLX arrays exist on the CPU only
    if type(x).__module__.startswith("torch"):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _run_mlx(fn: Callable, arrays: Sequence[np.ndarray], cotangent_seed: int, dtype=mx.float32):
    primals = [mx.array(a).astype(dtype) for a in arrays]
    outs = fn(*primals)
    rng = gen(cotangent_seed)
    cots = [mx.array(normal(rng, *o.shape)).astype(o.dtype) for o in outs]
    outs, grads = mx.vjp(lambda *p: list(fn(*p)), primals, cots)
    return [_numpy(o) for o in outs], [_numpy(g) for g in grads]


def _run_torch(fn: Callable, arrays: Sequence[np.ndarray], cotangent_seed: int):
    import torch

    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    outs = list(fn(*leaves))
    rng = gen(cotangent_seed)
    cots = [torch.tensor(normal(rng, *o.shape)) for o in outs]
    grads = torch.autograd.grad(outs, leaves, grad_outputs=cots, allow_unused=True)
    grads = [np.zeros(a.shape) if g is None else _numpy(g) for a, g in zip(arrays, grads)]
    return [_numpy(o) for o in outs], grads


def run(fn: Callable, arrays, framework: str, cotangent_seed: int):
    """Outputs and input gradients of ``fn`` (MLX or PyTorch) for fixed random cotangents."""
    if framework == "mlx":
        return _run_mlx(fn, arrays, cotangent_seed)
    if framework == "torch":
        return _run_torch(fn, arrays, cotangent_seed)
    raise ValueError(framework)


def conform(
    ours: Callable,
    theirs: Callable,
    arrays: dict[str, np.ndarray],
    *,
    impl: str,
    framework: str = "mlx",
    ours_framework: str = "mlx",
    outputs: Sequence[str] = ("y", "final_state"),
    grad: bool = True,
):
    """Assert ``ours(*arrays, impl=impl)`` equals ``theirs(*arrays)`` in values and gradients.

    ``ours`` takes arrays of ``ours_framework`` (MLX, or PyTorch to go through
    recurops' array-API bridge); ``theirs`` takes arrays of ``framework``
    (``"mlx"`` or ``"torch"``). Both return a tuple of outputs named by
    ``outputs``. Gradients are taken with respect to every array in
    ``arrays`` through one VJP with the same random cotangents on both sides.
    """
    names, values = list(arrays), list(arrays.values())
    seed = sum(int(np.abs(v).sum() * 1000) % 9973 for v in values)
    got_out, got_grad = run(lambda *p: tuple(ours(*p, impl=impl)), values, ours_framework, seed)
    ref_out, ref_grad = run(theirs, values, framework, seed)
    assert len(got_out) == len(ref_out) == len(outputs)

    checks = [
        (f"output {o}", g, r, i) for i, (o, g, r) in enumerate(zip(outputs, got_out, ref_out))
    ]
    if grad:
        checks += [
            (f"d/d{n}", g, r, len(outputs) + i)
            for i, (n, g, r) in enumerate(zip(names, got_grad, ref_grad))
        ]
    truth = None
    failures = []
    for label, got, ref, index in checks:
        err = rel_err(got, ref)
        if err < RTOL:
            continue
        if truth is None and ours_framework == "mlx":
            with mx.stream(mx.cpu):  # float64 runs on the CPU
                truth_out, truth_grad = _run_mlx(
                    lambda *p: tuple(ours(*p, impl="reference")), values, seed, dtype=mx.float64
                )
            truth = truth_out + truth_grad
        if truth is None:
            failures.append(f"{label}: rel err {err:.3g} (tolerance {RTOL:g})")
            continue
        exact = truth[index]
        if not np.any(exact) and max(np.linalg.norm(got), np.linalg.norm(ref)) < ZERO_ATOL:
            continue  # identically zero: no relative error exists, both sides are ~0
        failures.append(
            f"{label}: rel err {err:.3g} (tolerance {RTOL:g}); against float64 "
            f"recurops reference: recurops {rel_err(got, exact):.3g}, "
            f"theirs {rel_err(ref, exact):.3g}"
        )
    if failures:
        shapes = ", ".join(f"{n}{list(v.shape)}" for n, v in arrays.items())
        pytest.fail(f"impl={impl!r}, inputs {shapes}:\n  " + "\n  ".join(failures),
                    pytrace=False)


def on_cpu(fn: Callable) -> Callable:
    """``fn`` run on MLX's CPU stream.

    For another library's MLX code and for a test's own glue around ``scan``
    (projections, gates): on MLX's CUDA backend float32 matmuls run in TF32
    (relative error near 1e-3) unless ``MLX_ENABLE_TF32=0``, which would blur
    the comparison of the scans themselves. recurops' own paths stay on the
    default device, TF32 and all: keeping float32 accuracy there is its job.
    """

    def run(*args, **kwargs):
        with mx.stream(mx.cpu):
            return fn(*args, **kwargs)

    return run


def _impls() -> list[str]:
    from recurops._api import gpu_backend

    paths = ["fallback", "reference"]
    if gpu_backend() is not None:
        paths.insert(0, "auto")
    return paths


#: recurops paths every comparison runs on: the forced fallback and reference
#: paths, plus ``auto`` (the kernel where one applies) when MLX runs on a GPU.
IMPLS = _impls()

"""The array-API bridge: inputs of any array library in, results in the same library out.

``scan`` and ``explain`` run on MLX. When every input (and ``state``) already
is an ``mx.array`` nothing here runs beyond one ``isinstance`` check per input
(:func:`all_mlx`): MLX arrays are never copied. Otherwise :func:`bridged`

1. finds the caller's namespace with ``array_api_compat.array_namespace``
   (inputs from two libraries, MLX included, raise ``TypeError``);
2. imports each input into MLX with ``mx.array``, which reads the producer's
   DLPack capsule or buffer (never Python lists), keeping the dtype
   (float64 and bfloat16 included);
3. runs the MLX scan;
4. hands ``(y, final_state)`` back through the caller's ``from_dlpack`` (the
   buffer protocol for NumPy-backed namespaces, whose DLPack imports are
   read-only): a view of MLX's result buffer, no extra copy for ``y``;
   ``final_state`` is copied so it never aliases ``y``. Both are moved to the
   device of the first input where the namespace has devices.

Autodiff across the bridge:

- **PyTorch**: differentiable. When grad mode is on and an input or ``state``
  requires grad, the call is wrapped in a ``torch.autograd.Function`` whose
  backward runs ``mx.vjp`` of the same scan; ``loss.backward()`` and
  ``torch.autograd.grad`` give exact gradients for every floating input and
  ``state``. Double backward and ``torch.func`` transforms are not supported
  (torch raises its own error for them).
- **JAX**: forward values only. Under a JAX transformation (``jax.grad``,
  ``jax.jit``, ``jax.vmap``, ...) the inputs are tracers, and the call raises
  ``TypeError`` saying so, rather than returning values with no (or wrong)
  derivative.
- NumPy, array-api-strict, CuPy and other libraries have no autodiff.
"""

from __future__ import annotations

from collections.abc import Callable

import array_api_compat
import mlx.core as mx
import numpy as np

# Namespaces whose arrays are NumPy arrays underneath.
_NUMPY_BACKED = ("numpy", "array_api_strict")

# DLPack device types that are host memory MLX can read directly.
_HOST_DEVICES = (1, 3)  # kDLCPU, kDLCUDAHost


def all_mlx(arrays: tuple, state) -> bool:
    """True when every input and ``state`` is already an ``mx.array`` (the fast path)."""
    for x in arrays:
        if not isinstance(x, mx.array):
            return False
    return state is None or isinstance(state, mx.array)


def _library(xp) -> str:
    name = getattr(xp, "__name__", str(xp))
    return name.removeprefix("array_api_compat.").split(".")[0]


def namespace(kind: str, names: tuple, arrays: tuple, state):
    """The one array namespace of a call's inputs; TypeError naming the culprit otherwise."""
    named = list(zip(names, arrays, strict=True))
    if state is not None:
        named.append(("state", state))
    spaces = {}
    for name, x in named:
        if not array_api_compat.is_array_api_obj(x):
            raise TypeError(
                f"{kind}: input {name!r} must be an array, got {type(x).__name__}"
            )
        xp = array_api_compat.array_namespace(x)
        spaces.setdefault(_library(xp), (xp, name))
    if len(spaces) > 1:
        found = ", ".join(f"{name!r} is {lib}" for lib, (_, name) in spaces.items())
        raise TypeError(
            f"{kind}: inputs come from more than one array library ({found}); "
            "pass arrays of one library per call"
        )
    return next(iter(spaces.values()))[0]


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _refuse_tracers(kind: str, names: tuple, values: tuple) -> None:
    for name, x in zip(names, values, strict=False):
        # jax.core.Tracer and its subclasses (JVP, batching, jit tracers).
        if type(x).__module__.startswith("jax") and any(
            c.__name__ == "Tracer" for c in type(x).__mro__
        ):
            raise TypeError(
                f"{kind}: input {name!r} is a JAX tracer. recurops runs on MLX, and "
                "its JAX bridge supports forward values of concrete arrays only: "
                "jax.grad, jax.jit, jax.vmap and other JAX transformations cannot "
                "see through it. Call it outside the transformation, or use MLX "
                "arrays with mx.grad."
            )


def _mx_dtype(x):
    """The MLX dtype with the same name as ``x.dtype`` (mx.array would narrow float64)."""
    dtype = getattr(mx, str(x.dtype).rsplit(".", 1)[-1], None)
    return dtype if isinstance(dtype, mx.Dtype) else None


def _host(x):
    """``x`` in host memory MLX can import: itself when it already is."""
    if _is_torch(x):
        x = x.detach()
        return x if x.device.type == "cpu" else x.cpu()
    try:
        on_host = x.__dlpack_device__()[0] in _HOST_DEVICES
    except (AttributeError, TypeError, ValueError):
        on_host = False
    if on_host:
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    if type(x).__module__.startswith("jax"):
        import jax

        return jax.device_put(x, jax.devices("cpu")[0])
    return array_api_compat.to_device(x, "cpu")


def to_mlx(x) -> mx.array:
    """One foreign array as an ``mx.array`` with the same dtype (DLPack or buffer protocol)."""
    if isinstance(x, mx.array):
        return x
    dtype = _mx_dtype(x)
    x = _host(x)
    return mx.array(x) if dtype is None else mx.array(x, dtype=dtype)


def from_mlx(x: mx.array, xp, device, copy: bool = False):
    """An MLX result as an array of namespace ``xp`` on ``device``."""
    x = mx.contiguous(x)
    if _library(xp) in _NUMPY_BACKED:
        # The buffer protocol gives NumPy a writable view; a DLPack import is read-only.
        out = xp.asarray(np.asarray(x))
    else:
        try:
            out = xp.from_dlpack(x)
        except (BufferError, TypeError, ValueError, RuntimeError):
            # A device-only library (CuPy) imports no host memory: copy it over.
            out = xp.asarray(np.asarray(x))
    if device is not None and array_api_compat.device(out) != device:
        out = array_api_compat.to_device(out, device)
    elif copy:
        out = xp.asarray(out, copy=True)
    return out


def bridged(run: Callable, kind: str, names: tuple, arrays: tuple, state):
    """Run ``run(*mlx_inputs, state=mlx_state) -> (y, final_state)`` on foreign arrays.

    Returns ``(y, final_state)`` in the inputs' namespace and on the first
    input's device; see the module docstring for what happens to autodiff.
    """
    xp = namespace(kind, names, arrays, state)
    values = arrays if state is None else (*arrays, state)
    _refuse_tracers(kind, (*names, "state"), values)
    device = array_api_compat.device(arrays[0]) if arrays else None
    if _is_torch(values[0]):
        import torch

        if torch.is_grad_enabled() and any(v.requires_grad for v in values):
            return _torch_function().apply(run, state is not None, xp, device, *values)
    y, final = run(*map(to_mlx, arrays), state=None if state is None else to_mlx(state))
    return from_mlx(y, xp, device), from_mlx(final, xp, device, copy=True)


def explained(run: Callable, kind: str, names: tuple, arrays: tuple, state):
    """``run(*mlx_inputs, state=mlx_state)`` (``explain``) for foreign arrays, saying so."""
    xp = namespace(kind, names, arrays, state)
    _refuse_tracers(kind, (*names, "state"), arrays if state is None else (*arrays, state))
    result = run(*map(to_mlx, arrays), state=None if state is None else to_mlx(state))
    note = f"; {_library(xp)} inputs are copied to MLX and the results back"
    return result._replace(reason=result.reason + note)


_TORCH_FUNCTION = None


def _torch_function():
    """The ``torch.autograd.Function`` that carries PyTorch gradients across the bridge."""
    global _TORCH_FUNCTION
    if _TORCH_FUNCTION is not None:
        return _TORCH_FUNCTION
    import torch
    from torch.autograd.function import once_differentiable

    class ScanBridge(torch.autograd.Function):
        @staticmethod
        def forward(ctx, run, has_state, xp, device, *tensors):
            primals = [to_mlx(t) for t in tensors]
            ctx.run, ctx.has_state, ctx.primals = run, has_state, primals
            ctx.metas = [(t.dtype, t.device) for t in tensors]
            y, final = _call(run, has_state, primals)
            return from_mlx(y, xp, device), from_mlx(final, xp, device, copy=True)

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_y, grad_state):
            cotangents = [to_mlx(grad_y.contiguous()), to_mlx(grad_state.contiguous())]
            run, has_state = ctx.run, ctx.has_state
            _, grads = mx.vjp(lambda *p: _call(run, has_state, p), ctx.primals, cotangents)
            needed = ctx.needs_input_grad[4:]
            out = [
                torch.from_dlpack(mx.contiguous(g)).to(device=device, dtype=dtype) if n else None
                for n, g, (dtype, device) in zip(needed, grads, ctx.metas, strict=True)
            ]
            return (None, None, None, None, *out)

    _TORCH_FUNCTION = ScanBridge
    return ScanBridge


def _call(run, has_state, primals):
    if has_state:
        *inputs, state = primals
        return run(*inputs, state=state)
    return run(*primals, state=None)

"""The chassis helpers of mlx-recurrence 0.3.0: ``DEFAULT_SEG``, ``get_or_build_kernel``,
``check_segment_shape`` and ``parity_check``, with the same signatures and behaviour.

recurops' own scans use none of them (they have no ``L % seg`` or lane-width
limits); they are here for code that builds its own Metal kernels on them.
"""

from __future__ import annotations

import mlx.core as mx

# mlx-recurrence's default checkpoint segment. recurops accepts ``seg=`` for
# compatibility and picks its own segmentation.
DEFAULT_SEG = 32

# Simd lane width on Apple GPUs, as in mlx-recurrence.
SIMD_WIDTH = 32

_kernel_cache: dict = {}


def get_or_build_kernel(name, input_names, output_names, source, header=""):
    """Build a Metal kernel with ``mx.fast.metal_kernel`` once per ``name`` and cache it.

    Same signature as mlx-recurrence's. ``source`` is the kernel body (MLX
    writes the signature from ``input_names`` / ``output_names``); helpers go
    in ``header``. Needs MLX's Metal backend: elsewhere it raises
    ``RuntimeError`` (recurops' compat scans themselves never call it).
    """
    if name not in _kernel_cache:
        if not mx.metal.is_available():
            raise RuntimeError(
                f"get_or_build_kernel({name!r}) builds a Metal kernel with "
                "mx.fast.metal_kernel, and MLX's Metal backend is not available here "
                f"(default device {mx.default_device()}). The recurops.compat scans "
                "do not need it; only hand-written Metal kernels do."
            )
        _kernel_cache[name] = mx.fast.metal_kernel(
            name=name,
            input_names=input_names,
            output_names=output_names,
            source=source,
            header=header,
        )
    return _kernel_cache[name]


def check_segment_shape(L, seg, lane_dim, lane_name="lane dimension"):
    """mlx-recurrence's constraint check for segment-checkpoint kernels.

    Raises ``ValueError`` unless ``seg > 0``, ``L % seg == 0`` and
    ``lane_dim % 32 == 0`` — exactly as the original does, for kernels built
    on :func:`get_or_build_kernel`. recurops' own scans have no such limits
    and never call it.
    """
    if seg <= 0:
        raise ValueError(f"seg must be positive, got {seg}")
    if L % seg != 0:
        raise ValueError(
            f"sequence length L={L} must be divisible by seg={seg} "
            f"(segment-checkpoint pattern tiles L into L/seg segments)"
        )
    if lane_dim % SIMD_WIDTH != 0:
        raise ValueError(
            f"{lane_name}={lane_dim} must be a multiple of {SIMD_WIDTH} "
            f"(fused gradient reductions use {SIMD_WIDTH}-lane simdgroups)"
        )


def _max_abs(a) -> float:
    return float(mx.max(mx.abs(a)))


def parity_check(
    kernel_fn,
    reference_fn,
    inputs,
    arg_names,
    grad_argnums,
    *,
    w_out=None,
    y_tol=1e-3,
    grad_rtol=1e-3,
    label="",
    verbose=True,
):
    """Compare ``kernel_fn`` with ``reference_fn``: forward output and gradients.

    Both take the positional ``inputs`` and return ``y``. The loss is
    ``sum(y * w_out)`` (``w_out`` defaults to normal noise drawn with seed
    1234). The forward passes when max |diff| < ``y_tol``; each gradient in
    ``grad_argnums`` when max |diff| / max |reference| < ``grad_rtol``.

    Returns ``(ok, report)``, ``report`` mapping ``"y"`` and
    ``"grad_<name>"`` to ``{"abs": ..., "rel": ...}``; prints the table when
    ``verbose``. Same behaviour as mlx-recurrence 0.3.0's helper.
    """
    inputs = list(inputs)
    y_k = kernel_fn(*inputs)
    y_r = reference_fn(*inputs)
    mx.eval(y_k, y_r)
    if w_out is None:
        mx.random.seed(1234)
        w_out = mx.random.normal(y_r.shape)
        mx.eval(w_out)

    def loss(fn):
        return lambda *args: mx.sum(fn(*args) * w_out)

    y_abs = _max_abs(y_k - y_r)
    y_rel = y_abs / (_max_abs(y_r) + 1e-8)
    report = {"y": {"abs": y_abs, "rel": y_rel}}
    ok = y_abs < y_tol

    g_k = mx.grad(loss(kernel_fn), argnums=grad_argnums)(*inputs)
    g_r = mx.grad(loss(reference_fn), argnums=grad_argnums)(*inputs)
    mx.eval(g_k, g_r)
    if not isinstance(g_k, (tuple, list)):
        g_k, g_r = (g_k,), (g_r,)

    grad_names = [arg_names[i] for i in grad_argnums]
    for name, gk, gr in zip(grad_names, g_k, g_r, strict=True):
        diff = _max_abs(gk - gr)
        rel = diff / (_max_abs(gr) + 1e-8)
        report[f"grad_{name}"] = {"abs": diff, "rel": rel}
        ok = ok and rel < grad_rtol

    if verbose:
        prefix = f"{label}  " if label else ""
        print(f"{prefix}y          max|diff| = {y_abs:.2e}  (rel {y_rel:.2e})")
        for name in grad_names:
            r = report[f"grad_{name}"]
            print(f"{prefix}grad_{name:<8} max|diff| = {r['abs']:.2e}  (rel {r['rel']:.2e})")
        print(f"{prefix}-> {'PASS' if ok else 'FAIL'}")
    return ok, report

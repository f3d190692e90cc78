"""GPU benchmark: recurops' kernel and fallback paths against the peers.

Run on a machine with MLX's CUDA backend (or Metal), e.g. the project's
H100 device:  python benchmarks/bench.py --gpu [--quick] [--out results/gpu.json]
(the GPU mode of the benchmark program; ``python benchmarks/gpu.py`` is the same)

For each case it times forward and forward+backward (gradients of every
input) side by side in one process: recurops kernel / fallback / auto on
MLX, mlx-recurrence's token-loop references on the same GPU, mlx-lm's
``ssm_attn``, and, where PyTorch with CUDA is present, mamba_ssm's
``mamba_chunk_scan_combined`` and flash-linear-attention's Triton kernels
(``simple_gla`` for one gate per head, ``gla`` for a gate per key channel).
It also records MLX peak memory of a training step (as it runs, and under a
tight memory limit: ``working_set_bytes``) and the memory-traffic
floor of each case at 3 TB/s (the bytes a fused kernel must move: read
every input once, write the outputs; for fwd+bwd also read them again with
the output gradient and write every input gradient).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import mlx.core as mx

import recurops
from recurops._api import gpu_backend

BANDWIDTH = 3.0e12  # bytes/s, H100 SXM HBM3 (about 3.35 TB/s peak)


def timed(fn, repeats=10, sync=mx.synchronize):
    """Median seconds of ``fn()`` after warm-up (fewer repeats for slow ones)."""
    for _ in range(2):
        start = time.perf_counter()
        fn()
        sync()
    if time.perf_counter() - start > 0.5:
        repeats = 2
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def mlx_pair(fwd, inputs):
    """(forward, forward+backward) thunks for an MLX function of ``inputs``."""
    grad = mx.grad(lambda *a: fwd(*a).astype(mx.float32).sum(), tuple(range(len(inputs))))
    return (lambda: mx.eval(fwd(*inputs))), (lambda: mx.eval(grad(*inputs)))


def peak_training_bytes(train):
    """MLX's peak memory over one ``train()`` from a cleared cache."""
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    train()
    mx.synchronize()
    return mx.get_peak_memory()


def working_set_bytes(train):
    """``peak_training_bytes`` under a memory limit of 1 MB: what a training
    step needs when memory is short.

    With memory to spare, MLX allocates a graph's buffers as it queues the
    work and frees each once the device has run its last reader, so the
    peak comes near the sum of every buffer of the step. Above its memory
    limit MLX waits for queued work before allocating more, so there a
    buffer is gone before the next one is made and the peak is the largest
    set of buffers alive at once in MLX's order of evaluation.
    """
    limit = mx.set_memory_limit(1 << 20)
    try:
        return peak_training_bytes(train)
    finally:
        mx.set_memory_limit(limit)


# ---------------------------------------------------------------- cases


def ssd_case(batch, length, heads, p, n, dtype=mx.bfloat16):
    mx.random.seed(0)
    x = mx.random.normal((batch, length, heads, p)).astype(dtype)
    dt = (mx.random.uniform(shape=(batch, length, heads)) * 0.1).astype(dtype)
    A = -mx.random.uniform(0.5, 1.5, (heads,))
    B = mx.random.normal((batch, length, 1, n)).astype(dtype)
    C = mx.random.normal((batch, length, 1, n)).astype(dtype)
    inputs = (x, dt, A, B, C)
    size = mx.bfloat16.size
    fwd_bytes = size * (x.size * 2 + dt.size + B.size + C.size) + 4 * batch * heads * p * n
    name = f"ssd B={batch} L={length} H={heads} P={p} N={n} {dtype}"
    return name, "ssd", inputs, fwd_bytes, 2 * fwd_bytes + size * (x.size * 2 + dt.size)


def gla_case(batch, length, heads, dk, dv, dtype=mx.bfloat16, per_channel=False):
    mx.random.seed(0)
    q = (mx.random.normal((batch, length, heads, dk)) * dk**-0.5).astype(dtype)
    k = mx.random.normal((batch, length, heads, dk)).astype(dtype)
    v = mx.random.normal((batch, length, heads, dv)).astype(dtype)
    gate_shape = (batch, length, heads, dk) if per_channel else (batch, length, heads)
    g = mx.random.uniform(0.9, 1.0, gate_shape).astype(dtype)
    inputs = (q, k, v, g)
    size = mx.bfloat16.size
    io = q.size + k.size + v.size + g.size
    fwd_bytes = size * (io + v.size) + 4 * batch * heads * dk * dv
    gates = "per-channel" if per_channel else "per-head"
    name = f"gla B={batch} T={length} H={heads} K={dk} V={dv} {gates} gates {dtype}"
    return name, "gla", inputs, fwd_bytes, 2 * fwd_bytes + size * io


def rglru_case(batch, length, width, dtype=mx.bfloat16):
    mx.random.seed(0)
    a = mx.random.uniform(0.5, 1.0, (batch, length, width)).astype(dtype)
    x = mx.random.normal((batch, length, width)).astype(dtype)
    size = mx.bfloat16.size
    fwd_bytes = size * 3 * a.size
    return (f"rglru B={batch} L={length} D={width} {dtype}", "rglru", (a, x), fwd_bytes,
            fwd_bytes + size * 5 * a.size)


def rotlru_case(batch, length, pairs, dtype=mx.bfloat16):
    mx.random.seed(0)
    a = mx.random.uniform(0.5, 1.0, (batch, length, pairs)).astype(dtype)
    theta = mx.random.uniform(-3, 3, (batch, length, pairs))
    x = mx.random.normal((batch, length, 2 * pairs)).astype(dtype)
    inputs = (a, mx.cos(theta).astype(dtype), mx.sin(theta).astype(dtype), x)
    size = mx.bfloat16.size
    fwd_bytes = size * (3 * a.size + 2 * x.size)
    return (f"rotlru B={batch} L={length} P={pairs} {dtype}", "rotlru", inputs, fwd_bytes,
            2 * fwd_bytes + size * (3 * a.size + 2 * x.size))


def s6_case(batch, length, width, n, dtype=mx.bfloat16):
    mx.random.seed(0)
    u = mx.random.normal((batch, length, width)).astype(dtype)
    delta = (mx.random.uniform(shape=(batch, length, width)) * 0.1).astype(dtype)
    A = -mx.random.uniform(0.5, 1.5, (width, n))
    B = mx.random.normal((batch, length, n)).astype(dtype)
    C = mx.random.normal((batch, length, n)).astype(dtype)
    size = mx.bfloat16.size
    fwd_bytes = size * (3 * u.size + B.size + C.size)
    return (f"s6 B={batch} L={length} D={width} N={n} {dtype}", "s6", (u, delta, A, B, C),
            fwd_bytes, 2 * fwd_bytes + size * (2 * u.size + B.size + C.size))


# ---------------------------------------------------------------- peers


def _mlx_lm_ssm():
    """mlx-lm's ``models.ssm`` module, or None (the CPU benchmark's loader)."""
    from bench import _mlx_lm_ssm as load

    return load()


def _mlx_lm_parameters(x, dt, A):
    """mlx-lm's SSD parameters ``(A_log, D, dt_raw, dt_bias)`` for recurops'
    ``(x, dt, A)``: ``D = 0``, and ``dt`` used as given (``softplus(dt_raw +
    bias)`` with ``bias = 0`` comes back to ``dt`` within 1e-4)."""
    heads = x.shape[2]
    dt_raw = mx.log(mx.expm1(dt.astype(mx.float32) + 1e-4)).astype(x.dtype)
    return mx.log(-A), mx.zeros((heads,)), dt_raw, mx.zeros((heads,))


def peers_mlx(kind, inputs):
    """Alternatives that run on MLX: mlx-recurrence references and mlx-lm."""
    out = {}
    try:
        import mlx_recurrence as mr
    except ImportError:
        mr = None
    if inputs[0].shape[1] > 512:  # token loops: too slow and too big at long L
        mr = None
    if mr is not None and kind == "rglru":
        out["mlx-recurrence rglru_scan_reference"] = (mr.rglru_scan_reference, inputs)
    if mr is not None and kind == "rotlru":
        out["mlx-recurrence rotlru_scan_reference"] = (mr.rotlru_scan_reference, inputs)
    if mr is not None and kind == "gla":
        q, k, v, g = inputs
        if q.shape[-1] == v.shape[-1] and g.ndim == 3:
            out["mlx-recurrence gla_scan_reference"] = (mr.gla_scan_reference, inputs)
    if kind == "ssd":
        x, dt, A, B, C = inputs
        if mr is not None:
            out["mlx-recurrence ssd_scan_reference"] = (
                lambda x, dt, B, C: mr.ssd_scan_reference(
                    x, dt, mx.broadcast_to(B, (*B.shape[:2], x.shape[2], B.shape[3])),
                    mx.broadcast_to(C, (*C.shape[:2], x.shape[2], C.shape[3])),
                    mx.broadcast_to(A[:, None], (x.shape[2], B.shape[3]))),
                (x, dt, B, C))
        ssm = _mlx_lm_ssm()
        if ssm is not None:
            ssm_attn = ssm.ssm_attn
            A_log, D, dt_raw, bias = _mlx_lm_parameters(x, dt, A)
            out["mlx-lm ssm_attn"] = (
                lambda x, dt_raw, B, C: ssm_attn(x, A_log, B, C, D, dt_raw, bias,
                                                 time_step_limit=(0.0, 1e4))[0],
                (x, dt_raw, B, C))
    return out


def _torch_tensor(a, grad=False):
    """MLX array ``a`` on the CUDA device as PyTorch's: bfloat16 if ``a`` is,
    float32 otherwise."""
    import numpy as np
    import torch

    t = torch.from_numpy(np.array(a.astype(mx.float32))).cuda()
    return t.to(torch.bfloat16 if a.dtype == mx.bfloat16 else torch.float32).requires_grad_(grad)


def peers_torch(kind, inputs):
    """mamba_ssm and fla on PyTorch (CUDA), as (forward, fwd+bwd) thunks."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}

    def tensor(a):
        return _torch_tensor(a, grad=True)

    def pair(fn, args):
        def fwd():
            with torch.no_grad():
                fn(*args)

        def train():
            out = fn(*args)
            out.float().sum().backward()
        return fwd, train

    out = {}
    if kind == "ssd":
        try:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        except Exception as error:  # noqa: BLE001 - report any import failure
            print(f"  (mamba_ssm unavailable: {error})", file=sys.stderr)
        else:
            x, dt, A, B, C = inputs
            args = (tensor(x), tensor(dt), tensor(A.astype(mx.float32)), tensor(B), tensor(C))
            out["mamba_ssm mamba_chunk_scan_combined"] = pair(
                lambda x, dt, A, B, C: mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=256),
                args)
    if kind == "gla" and inputs[3].ndim == 4:  # a gate per key channel: fla's GLA
        try:
            from fla.ops.gla import chunk_gla, fused_recurrent_gla
        except Exception as error:  # noqa: BLE001
            print(f"  (fla unavailable: {error})", file=sys.stderr)
        else:
            q, k, v, g = inputs
            args = (tensor(q), tensor(k), tensor(v), tensor(mx.log(g.astype(mx.float32))))
            out["fla chunk_gla"] = pair(
                lambda q, k, v, g: chunk_gla(q, k, v, g, scale=1.0)[0], args)
            out["fla fused_recurrent_gla"] = pair(
                lambda q, k, v, g: fused_recurrent_gla(q, k, v, gk=g, scale=1.0)[0], args)
    if kind == "gla" and inputs[3].ndim == 3:
        try:
            from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
        except Exception as error:  # noqa: BLE001
            print(f"  (fla unavailable: {error})", file=sys.stderr)
        else:
            q, k, v, g = inputs
            args = (tensor(q), tensor(k), tensor(v),
                    tensor(mx.log(g.astype(mx.float32))))
            # fla 0.6.0 refuses this backward with Triton 3.4 to 3.7.0 on Hopper (fla
            # issue #640: wrong results there); the row then records the refusal.
            out["fla chunk_simple_gla"] = pair(
                lambda q, k, v, g: chunk_simple_gla(q, k, v, g, scale=1.0)[0], args)
            out["fla fused_recurrent_simple_gla"] = pair(
                lambda q, k, v, g: fused_recurrent_simple_gla(q, k, v, g, scale=1.0)[0], args)
    return out


# ---------------------------------------------------------------- main


def run_case(case, repeats, rounds=3, peers=True):
    """Time every row of ``case`` in ``rounds`` alternating rounds (kernel,
    fallback, auto, then the peers, again and again), so a slow stretch of
    the machine lands on every row alike; a row's time is the median of its
    rounds, and the JSON keeps each round's."""
    name, kind, inputs, fwd_bytes, train_bytes = case
    print(f"\n== {name}", flush=True)
    floor_f, floor_t = fwd_bytes / BANDWIDTH, train_bytes / BANDWIDTH
    rows = {}  # label -> (forward thunk, training thunk, synchronize, peak bytes)
    impls = ("kernel", "fallback", "auto") if gpu_backend() else ("fallback",)
    for impl in impls:
        fwd = lambda *a, impl=impl: recurops.scan(kind, *a, impl=impl)[0]  # noqa: E731
        f, t = mlx_pair(fwd, inputs)
        rows[f"recurops {impl}"] = (f, t, mx.synchronize, _memory(t))
    if peers:
        for label, (fn, args) in peers_mlx(kind, inputs).items():
            f, t = mlx_pair(fn, args)
            rows[label] = (f, t, mx.synchronize, _memory(t))
        import importlib.util
        if importlib.util.find_spec("torch"):
            import torch
            for label, (f, t) in peers_torch(kind, inputs).items():
                rows[label] = (f, t, torch.cuda.synchronize, (None, None))
    times = {label: {"fwd": [], "fwd_bwd": []} for label in rows}
    errors = {label: {} for label in rows}  # label -> {part: why it failed}
    for r in range(rounds):
        for label, (f, t, sync, _peak) in rows.items():
            for part, fn in (("fwd", f), ("fwd_bwd", t)):
                times[label][part].append(_time_or_nan(fn, repeats, sync, part, errors[label]))
            # progress on stderr, so a run cut short by a time limit still shows what it measured
            last = {part: runs[-1] * 1e3 for part, runs in times[label].items()}
            print(f"    round {r + 1}: {label:42s} fwd {last['fwd']:9.3f} ms  "
                  f"fwd+bwd {last['fwd_bwd']:9.3f} ms", file=sys.stderr, flush=True)
    result = {"case": name, "kind": kind, "floor_fwd_ms": floor_f * 1e3,
              "floor_fwd_bwd_ms": floor_t * 1e3, "rounds": rounds, "rows": []}
    for label, (*_, (peak, working)) in rows.items():
        t_f, t_t = (statistics.median(times[label][part]) for part in ("fwd", "fwd_bwd"))
        result["rows"].append({
            "impl": label, "fwd_ms": t_f * 1e3, "fwd_bwd_ms": t_t * 1e3,
            "fwd_ms_rounds": [t * 1e3 for t in times[label]["fwd"]],
            "fwd_bwd_ms_rounds": [t * 1e3 for t in times[label]["fwd_bwd"]],
            "peak_MB": None if peak is None else peak / 1e6,
            "working_set_MB": None if working is None else working / 1e6,
            **({"error": "; ".join(errors[label].values())} if errors[label] else {})})
        floors = (f" ({t_f / floor_f:7.1f}x floor)", f" ({t_t / floor_t:7.1f}x floor)")
        if peak is None:  # a PyTorch peer: its memory is not MLX's to count
            floors = (" " * len(floors[0]), "")
        peak_s = "" if peak is None else (f"  peak {peak / 1e6:9.1f} MB"
                                          f"  working set {working / 1e6:9.1f} MB")
        print(f"  {label:42s} fwd {t_f * 1e3:9.3f} ms{floors[0]}  "
              f"fwd+bwd {t_t * 1e3:9.3f} ms{floors[1]}{peak_s}"
              + "".join(f"  ({e})" for e in errors[label].values()), flush=True)
    return result


def _memory(train) -> tuple[int, int]:
    """(peak, working set) bytes of one training step of an MLX row."""
    return peak_training_bytes(train), working_set_bytes(train)


def _time_or_nan(fn, repeats, sync, part, errors) -> float:
    """``timed(fn)``, or NaN with the reason in ``errors[part]`` when a peer
    refuses or fails (a peer's library refusing a card must not end the
    benchmark); a part that failed once is not run again."""
    if fn is None or part in errors:
        return math.nan
    try:
        return timed(fn, repeats, sync)
    except Exception as error:  # noqa: BLE001 - any peer failure is reported, not raised
        errors[part] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return math.nan


def cases(quick):
    if quick:
        return [ssd_case(2, 256, 4, 64, 16), gla_case(2, 256, 4, 64, 64),
                rglru_case(2, 256, 256), rotlru_case(2, 256, 128), s6_case(2, 256, 256, 16)]
    return [
        ssd_case(8, 2048, 32, 64, 128),
        ssd_case(3, 512, 12, 64, 16),
        ssd_case(3, 512, 12, 64, 16, mx.float32),
        gla_case(3, 512, 12, 64, 64),
        gla_case(3, 512, 12, 64, 64, per_channel=True),
        gla_case(8, 2048, 16, 128, 128),
        gla_case(8, 2048, 16, 128, 128, per_channel=True),
        gla_case(1, 8192, 16, 128, 128, per_channel=True),  # one long sequence
        rglru_case(8, 512, 1024),
        rglru_case(8, 2048, 2048),
        rotlru_case(8, 512, 512),
        rotlru_case(8, 2048, 1024),
        s6_case(8, 2048, 1536, 16),
    ]


def memory_sweep(lengths=(512, 1024, 2048, 4096)):
    """Training peak memory against ``L``: recurops' kernel and fallback paths
    (and mlx-lm's ``ssm_attn``) at the large ``ssd`` / ``gla`` shapes. The
    kernel path keeps a checkpoint every 256 steps, not a state per step."""
    rows = []
    for length in lengths:
        for name, kind, inputs, *_ in (ssd_case(8, length, 32, 64, 128),
                                       gla_case(8, length, 16, 128, 128)):
            paths = {f"recurops {impl}": (
                lambda *a, kind=kind, impl=impl: recurops.scan(kind, *a, impl=impl)[0], inputs)
                for impl in ("kernel", "fallback")}
            paths.update({k: v for k, v in peers_mlx(kind, inputs).items() if "mlx-lm" in k})
            for label, (fn, args) in paths.items():
                peak = peak_training_bytes(mlx_pair(fn, args)[1])
                rows.append({"case": name, "L": length, "impl": label, "peak_MB": peak / 1e6})
                print(f"  L={length:5d} {name[:3]} {label:24s} peak {peak / 1e6:9.1f} MB  "
                      f"(inputs {sum(x.nbytes for x in inputs) / 1e6:.1f} MB)", flush=True)
    return rows


# ---------------------------------------------------------------- decoding


DECODE_STEPS = 64  # steps of one decoding run, the state carried from step to step


def decode_cases(batch):
    """One step (``L = 1``) of each kind at serving shapes, with a state."""
    return [
        ssd_case(batch, 1, 32, 64, 128), gla_case(batch, 1, 16, 128, 128),
        rglru_case(batch, 1, 2048), rotlru_case(batch, 1, 1024), s6_case(batch, 1, 1536, 16),
    ]


def _decode_peers(kind, inputs, state):
    """``(step, state, wait)`` of the peers that decode one token, with
    ``step(state) -> (y, state)``: mlx-lm's ``ssm_update`` (MLX) and fla's
    ``fused_recurrent_simple_gla`` (PyTorch)."""
    out = {}
    if kind == "ssd":
        ssm = _mlx_lm_ssm()
        if ssm is not None:
            ssm_update = ssm.ssm_update
            x, dt, A, B, C = inputs
            A_log, D, dt_raw, bias = _mlx_lm_parameters(x, dt, A)
            # mlx-lm keeps the state as [B, H, P, N], as recurops does
            out["mlx-lm ssm_update"] = (lambda h: ssm_update(
                x, A_log, B, C, D, dt_raw, bias, h, time_step_limit=(0.0, 1e4)), state,
                _mlx_wait)
    if kind == "gla" and inputs[3].ndim == 3:
        try:
            import torch
            from fla.ops.simple_gla import fused_recurrent_simple_gla
        except Exception as error:  # noqa: BLE001 - report any import failure
            print(f"  (fla unavailable: {error})", file=sys.stderr)
        else:
            if torch.cuda.is_available():
                q, k, v, g = (_torch_tensor(a) for a in inputs)
                g = torch.log(g.float())
                h0 = _torch_tensor(state)  # [B, H, K, V], float32
                out["fla fused_recurrent_simple_gla"] = (lambda h: fused_recurrent_simple_gla(
                    q, k, v, g, scale=1.0, initial_state=h, output_final_state=True), h0,
                    lambda *_: torch.cuda.synchronize())
    return out


def _decode_times(step, state, wait, repeats):
    """(ms a step when each step is waited for, ms a step when the steps are
    queued and waited for once) over ``DECODE_STEPS`` steps; ``wait(y, h)``
    blocks until both are computed."""

    def run(every):
        h = state
        for i in range(DECODE_STEPS):
            y, h = step(h)
            if every or i == DECODE_STEPS - 1:
                wait(y, h)

    return tuple(timed(lambda every=every: run(every), repeats, sync=lambda: None)
                 / DECODE_STEPS * 1e3 for every in (True, False))


def _mlx_wait(*arrays):
    mx.eval(*arrays)


def run_decode(case, repeats):
    name, kind, inputs, *_ = case
    print(f"\n== decode {name}", flush=True)
    state = mx.zeros_like(recurops.scan(kind, *inputs, impl="reference")[1])
    paths = {f"recurops {impl}": (
        lambda h, impl=impl: recurops.scan(kind, *inputs, state=h, impl=impl), state, _mlx_wait)
        for impl in (("kernel", "fallback", "auto") if gpu_backend() else ("fallback",))}
    # a serving loop that compiles its step: no Python dispatch left at all
    paths["recurops auto, mx.compile"] = (
        mx.compile(lambda h: recurops.scan(kind, *inputs, state=h)), state, _mlx_wait)
    paths.update(_decode_peers(kind, inputs, state))
    rows = []
    for label, (step, h0, wait) in paths.items():
        waited, queued = _decode_times(step, h0, wait, repeats)
        rows.append({"impl": label, "waited_ms": waited, "queued_ms": queued})
        print(f"  {label:42s} a step: waited {waited * 1e3:8.1f} us, queued "
              f"{queued * 1e3:8.1f} us", flush=True)
    return {"case": name, "kind": kind, "steps": DECODE_STEPS, "rows": rows}


def _card() -> str | None:
    """The GPU's name, where ``nvidia-smi`` can tell it."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict:
    """Installed versions of recurops and every library compared against."""
    from importlib import metadata

    names = ("mlx", "mlx-recurrence", "mlx-lm", "torch", "triton", "fla-core", "mamba-ssm")
    found = {"recurops": recurops.__version__}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes")
    parser.add_argument("--only", default="",
                        help="comma-separated substrings: run cases whose name contains one")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs a round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds over a case's rows; a row reports their median")
    parser.add_argument("--out", default="", help="write results as JSON here")
    parser.add_argument("--no-peers", action="store_true",
                        help="recurops' paths only (no token loops, mlx-lm, fla or mamba_ssm)")
    parser.add_argument("--decode", type=int, default=0, metavar="B",
                        help="time one-token decoding steps at batch B instead")
    parser.add_argument("--memory-sweep", action="store_true",
                        help="also record training peak memory against L")
    args = parser.parse_args(argv)
    card = _card()
    print(f"card: {card}", flush=True)
    results = {
        "machine": platform.platform(), "device": str(mx.default_device()), "card": card,
        "versions": _versions(), "bandwidth_Bps": BANDWIDTH, "cases": [],
    }

    def save():  # after every case, so a run cut short keeps what it measured
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)

    wanted = args.only.split(",")
    if args.decode:
        results["decode"] = [run_decode(case, args.repeats) for case in decode_cases(args.decode)
                             if any(w in case[0] for w in wanted)]
        save()
        return
    for case in cases(args.quick):
        if any(w in case[0] for w in wanted):
            results["cases"].append(run_case(case, args.repeats, args.rounds,
                                              peers=not args.no_peers))
            save()
    if args.memory_sweep:
        print("\n== training peak memory against L", flush=True)
        results["memory_sweep"] = memory_sweep()
        save()


if __name__ == "__main__":
    main()

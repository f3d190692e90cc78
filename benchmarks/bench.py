"""Benchmark: recurops against the alternatives, forward and forward+backward.

    PYTHONPATH=. python benchmarks/bench.py                 # CPU, the standard shapes
    PYTHONPATH=. python benchmarks/bench.py --quick         # tiny shapes, a smoke test
    PYTHONPATH=. python benchmarks/bench.py --lengths 256,512,1024,2048
    PYTHONPATH=. python benchmarks/bench.py --cases gla,ssd --repeats 7

Every case is one recurrence at one set of shapes. For each case the
program times, side by side in one process, every *path* that can run on the
chosen device: recurops' own paths (``fallback``; ``kernel`` and ``auto``
on a GPU) and the alternatives (mlx-recurrence 0.3.0's token-loop
references, mlx-lm's ``ssm_attn``, recurops' own token loop). For each path
it reports

* forward time and forward+backward time (gradient of ``sum(y * w)`` for a
  fixed random ``w`` with respect to every floating input): the median of
  ``--repeats`` runs after a warm-up run, each ``mx.eval`` then
  ``mx.synchronize()``; the minimum is recorded too;
* peak memory of the forward and of the forward+backward
  (``mx.get_peak_memory()`` after ``mx.reset_peak_memory()``);

and prints each alternative's time divided by recurops' time (``x`` > 1
means recurops is faster). Results go to ``benchmarks/results/<name>.json``
with the machine, library versions, shapes and dtype.

Adding a peer: write a function ``setup(case, inputs) -> (forward, args)``
whose ``forward(*args)`` returns the output ``y`` (the same quantity as
recurops' ``y``), and add a ``Path`` to the case's ``paths`` (or to
``common_paths``). ``devices`` says where it runs, so GPU-only peers (fused
kernels, PyTorch/Triton) slot in beside the CPU ones.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FilePath

import mlx.core as mx

ROOT = FilePath(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import recurops  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------
# optional peers


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _mlx_recurrence():
    try:
        return importlib.import_module("mlx_recurrence")
    except Exception:
        return None


def _mlx_lm_ssm():
    """``mlx_lm.models.ssm``; loaded from its file if the package's ``__init__``
    cannot import (it pulls in huggingface_hub, which the module itself does
    not need)."""
    try:
        return importlib.import_module("mlx_lm.models.ssm")
    except Exception:
        pass
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = FilePath(list(spec.submodule_search_locations)[0]) / "models" / "ssm.py"
    if not path.exists():
        return None
    module_spec = importlib.util.spec_from_file_location("_bench_mlx_lm_ssm", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception:
        return None
    return module


# --------------------------------------------------------------------------
# cases and paths


@dataclass
class Path:
    """One way of computing a case: ``setup(case, inputs) -> (forward, args)``."""

    name: str
    setup: Callable
    devices: tuple = ("cpu", "gpu")
    ours: bool = False
    loop: bool = False  # a token loop: skipped above --max-loop-length
    available: Callable = lambda: True


@dataclass
class Case:
    name: str
    kind: str
    shapes: dict
    make: Callable  # (shapes, dtype) -> dict of named inputs, in the kind's order
    paths: list = field(default_factory=list)
    description: str = ""


def _recurops(impl: str) -> Callable:
    def setup(case, inputs):
        names = list(inputs)

        def forward(*args):
            return recurops.scan(case.kind, *args, impl=impl)[0]

        return forward, tuple(inputs[n] for n in names)

    return setup


def common_paths() -> list:
    """recurops' paths; every case gets these."""
    return [
        Path("recurops fallback", _recurops("fallback"), ours=True),
        Path("recurops kernel", _recurops("kernel"), devices=("gpu",), ours=True),
        Path("recurops auto", _recurops("auto"), devices=("gpu",), ours=True),
        Path("recurops reference loop", _recurops("reference"), loop=True),
    ]


# ---- inputs


def _rand(shape, dtype, low=None, high=None):
    x = mx.random.normal(shape) if low is None else mx.random.uniform(low, high, shape)
    return x.astype(dtype)


def make_gla(s, dtype):
    b, L, h, d = s["B"], s["L"], s["H"], s["D"]
    gate_shape = (b, L, h, d) if s.get("per_channel") else (b, L, h)
    return {
        "q": _rand((b, L, h, d), dtype) * d**-0.5,
        "k": _rand((b, L, h, d), dtype) * d**-0.5,
        "v": _rand((b, L, h, d), dtype),
        "g": _rand(gate_shape, dtype, 0.9, 1.0),
    }


def make_ssd(s, dtype):
    b, L, h, p, g, n = s["B"], s["L"], s["H"], s["P"], s["G"], s["N"]
    return {
        "x": _rand((b, L, h, p), dtype),
        "dt": _rand((b, L, h), dtype, 0.001, 0.1),
        "A": -_rand((h, n) if s.get("per_channel") else (h,), dtype, 1.0, 16.0),
        "B": _rand((b, L, g, n), dtype),
        "C": _rand((b, L, g, n), dtype),
    }


def make_rglru(s, dtype):
    b, L, d = s["B"], s["L"], s["D"]
    return {"a": _rand((b, L, d), dtype, 0.5, 1.0), "x": _rand((b, L, d), dtype)}


def make_rotlru(s, dtype):
    b, L, p = s["B"], s["L"], s["P"]
    theta = _rand((b, L, p), mx.float32, -3.0, 3.0)
    return {
        "a": _rand((b, L, p), dtype, 0.5, 1.0),
        "cos": mx.cos(theta).astype(dtype),
        "sin": mx.sin(theta).astype(dtype),
        "x": _rand((b, L, 2 * p), dtype),
    }


def make_s6(s, dtype):
    b, L, d, n = s["B"], s["L"], s["D"], s["N"]
    return {
        "u": _rand((b, L, d), dtype),
        "delta": _rand((b, L, d), dtype, 0.001, 0.1),
        "A": -_rand((d, n), dtype, 1.0, 16.0),
        "B": _rand((b, L, n), dtype),
        "C": _rand((b, L, n), dtype),
    }


# ---- alternatives


def _mr(name):
    def setup(case, inputs):
        return getattr(_mlx_recurrence(), name), tuple(inputs.values())

    return setup


def _mr_ssd(case, inputs):
    """mlx-recurrence's ssd reference wants B, C per head and A as [H, N]."""
    ref = _mlx_recurrence().ssd_scan_reference
    heads, n = inputs["x"].shape[2], inputs["B"].shape[-1]

    def forward(x, dt, A, B, C):
        r = heads // B.shape[2]
        a_neg = A if A.ndim == 2 else mx.broadcast_to(A[:, None], (heads, n))
        return ref(x, dt, mx.repeat(B, r, axis=2), mx.repeat(C, r, axis=2), a_neg)

    return forward, tuple(inputs.values())


def _mamba2_inputs(inputs):
    """The same SSD expressed as a Mamba-2 layer's raw parameters."""
    x, dt, A, B, C = inputs.values()
    h = x.shape[2]
    return {
        "x": x,
        "A_log": mx.log(-A),
        "B": B,
        "C": C,
        "D": _rand((h,), x.dtype),
        "dt": dt,  # raw, before softplus(dt + dt_bias)
        "dt_bias": _rand((h,), x.dtype, -0.5, 0.5),
    }


def _mlx_lm_layer(case, inputs):
    ssm = _mlx_lm_ssm()

    def forward(x, A_log, B, C, D, dt, dt_bias):
        return ssm.ssm_attn(x, A_log, B, C, D, dt, dt_bias)[0]

    return forward, tuple(_mamba2_inputs(inputs).values())


def _recurops_layer(impl):
    """recurops doing exactly what ``ssm_attn`` does: softplus/clip of dt,
    A = -exp(A_log), the scan, and the ``D`` skip connection."""

    def setup(case, inputs):
        def forward(x, A_log, B, C, D, dt, dt_bias):
            dt = mx.clip(mx.logaddexp(dt + dt_bias, 0.0), 0.001, 100.0)
            y, _ = recurops.scan("ssd", x, dt, -mx.exp(A_log), B, C, impl=impl)
            return y + x * D[:, None]

        return forward, tuple(_mamba2_inputs(inputs).values())

    return setup


def build_cases(lengths=None, quick=False) -> list:
    if quick:
        gla = {"B": 1, "L": 64, "H": 2, "D": 16}
        ssd = {"B": 1, "L": 64, "H": 2, "P": 16, "G": 1, "N": 16}
        rglru = {"B": 1, "L": 64, "D": 64}
        rot = {"B": 1, "L": 64, "P": 32}
        s6 = {"B": 1, "L": 64, "D": 32, "N": 8}
    else:
        gla = {"B": 2, "L": 1024, "H": 8, "D": 64}
        ssd = {"B": 2, "L": 1024, "H": 8, "P": 64, "G": 1, "N": 64}
        rglru = {"B": 2, "L": 1024, "D": 1024}
        rot = {"B": 2, "L": 1024, "P": 512}
        s6 = {"B": 2, "L": 1024, "D": 256, "N": 16}
    have_mr = lambda: _mlx_recurrence() is not None  # noqa: E731
    have_lm = lambda: _mlx_lm_ssm() is not None  # noqa: E731
    base = [
        Case(
            "gla",
            "gla",
            gla,
            make_gla,
            [
                Path(
                    "mlx-recurrence gla_scan_reference",
                    _mr("gla_scan_reference"),
                    loop=True,
                    available=have_mr,
                )
            ],
            "gated linear attention, one gate per head",
        ),
        Case(
            "gla-channel",
            "gla",
            {**gla, "per_channel": True},
            make_gla,
            [],
            "gated linear attention, one gate per key channel",
        ),
        Case(
            "ssd",
            "ssd",
            ssd,
            make_ssd,
            [Path("mlx-recurrence ssd_scan_reference", _mr_ssd, loop=True, available=have_mr)],
            "Mamba-2 SSD scan, A [H], one group",
        ),
        Case(
            "ssd-channel",
            "ssd",
            {**ssd, "per_channel": True},
            make_ssd,
            [Path("mlx-recurrence ssd_scan_reference", _mr_ssd, loop=True, available=have_mr)],
            "Mamba-2 SSD scan, A [H, N] (one decay per head and state channel)",
        ),
        Case(
            "ssd-layer",
            "ssd",
            ssd,
            make_ssd,
            [
                Path("recurops fallback", _recurops_layer("fallback"), ours=True),
                Path("recurops kernel", _recurops_layer("kernel"), devices=("gpu",), ours=True),
                Path("mlx-lm ssm_attn", _mlx_lm_layer, available=have_lm),
            ],
            "Mamba-2 SSD as mlx-lm's ssm_attn computes it (softplus dt, -exp(A_log), D skip)",
        ),
        Case(
            "rglru",
            "rglru",
            rglru,
            make_rglru,
            [
                Path(
                    "mlx-recurrence rglru_scan_reference",
                    _mr("rglru_scan_reference"),
                    loop=True,
                    available=have_mr,
                )
            ],
            "RG-LRU diagonal scan",
        ),
        Case(
            "rotlru",
            "rotlru",
            rot,
            make_rotlru,
            [
                Path(
                    "mlx-recurrence rotlru_scan_reference",
                    _mr("rotlru_scan_reference"),
                    loop=True,
                    available=have_mr,
                )
            ],
            "rotational LRU (complex-diagonal) scan",
        ),
        Case("s6", "s6", s6, make_s6, [], "Mamba-1 selective scan"),
    ]
    cases = []
    for case in base:
        own = {p.name for p in case.paths}
        if case.name != "ssd-layer":
            case.paths = [p for p in common_paths() if p.name not in own] + case.paths
        for length in lengths or [case.shapes["L"]]:
            cases.append(
                Case(
                    case.name,
                    case.kind,
                    {**case.shapes, "L": length},
                    case.make,
                    case.paths,
                    case.description,
                )
            )
    return cases


# --------------------------------------------------------------------------
# measuring


def _device() -> str:
    return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"


def _timed(fn, repeats: int, budget: float) -> dict:
    """Warm-up, then up to ``repeats`` timed runs (fewer if a run is slow)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = repeats if first * repeats <= budget else max(2, int(budget / max(first, 1e-9)))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {
        "median_ms": 1e3 * statistics.median(samples),
        "min_ms": 1e3 * min(samples),
        "runs": len(samples),
    }


def _peak(fn) -> int:
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()
    fn()
    return mx.get_peak_memory()


def measure(case: Case, path: Path, dtype, repeats: int, budget: float) -> dict:
    mx.random.seed(0)
    inputs = case.make(case.shapes, dtype)
    mx.eval(inputs)
    forward, args = path.setup(case, inputs)
    mx.eval(args)
    y = forward(*args)
    mx.random.seed(1)
    w = mx.random.normal(y.shape).astype(y.dtype)
    mx.eval(y, w)
    floating = tuple(i for i, a in enumerate(args) if mx.issubdtype(a.dtype, mx.floating))
    grad = mx.grad(lambda *a: (forward(*a) * w).astype(mx.float32).sum(), argnums=floating)

    def run_fwd():
        mx.eval(forward(*args))
        mx.synchronize()

    def run_train():
        mx.eval(grad(*args))
        mx.synchronize()

    out = {"fwd": _timed(run_fwd, repeats, budget)}
    out["fwd"]["peak_mb"] = _peak(run_fwd) / 1e6
    out["fwd_bwd"] = _timed(run_train, repeats, budget)
    out["fwd_bwd"]["peak_mb"] = _peak(run_train) / 1e6
    return out


def _machine() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "mlx": _version("mlx"),
        "mlx_recurrence": _version("mlx-recurrence"),
        "mlx_lm": _version("mlx-lm"),
        "recurops": recurops.__version__,
        "device": str(mx.default_device()),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = os.getloadavg()
    return info


# --------------------------------------------------------------------------
# reporting


def _fmt_ms(x):
    return "-" if x is None else (f"{x:.0f}" if x >= 10 else f"{x:.1f}")


def table(results: list) -> str:
    head = (
        f"{'case':<12} {'L':>5} {'path':<36} {'fwd ms':>8} {'fwd+bwd ms':>10} "
        f"{'peak MB':>8}  {'speedup of recurops (fwd, fwd+bwd)':<}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ours = next((p for p in r["paths"] if p["ours"] and "fwd" in p), None)
        for p in r["paths"]:
            if "fwd" not in p:
                lines.append(
                    f"{r['case']:<12} {r['shapes']['L']:>5} {p['path']:<36} "
                    f"  ({p.get('skipped', 'skipped')})"
                )
                continue
            f, t = p["fwd"]["median_ms"], p["fwd_bwd"]["median_ms"]
            ratio = ""
            if ours is not None and not p["ours"]:
                ratio = (
                    f"{f / ours['fwd']['median_ms']:6.1f}x {t / ours['fwd_bwd']['median_ms']:7.1f}x"
                )
            lines.append(
                f"{r['case']:<12} {r['shapes']['L']:>5} {p['path']:<36} "
                f"{_fmt_ms(f):>8} {_fmt_ms(t):>10} {p['fwd_bwd']['peak_mb']:>8.0f}  {ratio}"
            )
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The results as a Markdown table (for docs/benchmarks.md); a GPU
    mode's results as ``tables.py`` writes them (docs/kernels.md)."""
    if "cases" in report:  # written by --gpu
        import tables

        return "\n\n".join(tables.case_table(case) for case in report["cases"])
    lines = [
        "| case | L | path | fwd ms | fwd+bwd ms | peak MB (fwd+bwd) "
        "| recurops speedup fwd | fwd+bwd |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        ours = next((p for p in r["paths"] if p["ours"] and "fwd" in p), None)
        for p in r["paths"]:
            if "fwd" not in p:
                continue
            f, t = p["fwd"]["median_ms"], p["fwd_bwd"]["median_ms"]
            name = f"**{p['path']}**" if p["ours"] else p["path"]
            ratio = " | |"
            if ours is not None and not p["ours"]:
                ratio = (
                    f" {f / ours['fwd']['median_ms']:.1f}x |"
                    f" **{t / ours['fwd_bwd']['median_ms']:.1f}x** |"
                )
            lines.append(
                f"| {r['case']} | {r['shapes']['L']} | {name} | {_fmt_ms(f)} | {_fmt_ms(t)} "
                f"| {p['fwd_bwd']['peak_mb']:.0f} |{ratio}"
            )
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--gpu" in argv:  # GPU mode: kernels vs fallback vs the CUDA peers (gpu.py)
        import gpu

        return gpu.main([a for a in argv if a != "--gpu"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--lengths", help="comma-separated sequence lengths L to sweep")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds of timed runs per measurement before cutting repeats",
    )
    parser.add_argument(
        "--max-loop-length",
        type=int,
        default=2048,
        help="skip token-loop paths above this L (they are slow and large)",
    )
    parser.add_argument("--no-loops", action="store_true", help="skip every token-loop path")
    parser.add_argument(
        "--exclude", help="comma-separated substrings: skip paths whose name has one"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--name", help="results file name (default: cpu[-quick|-sweep])")
    parser.add_argument(
        "--markdown",
        type=FilePath,
        metavar="JSON",
        help="print the results in JSON as a Markdown table and exit",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return

    dtype = getattr(mx, args.dtype)
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else None
    cases = build_cases(lengths, args.quick)
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.name for c in cases}
        if unknown:
            parser.error(
                f"unknown cases {sorted(unknown)}; known: {sorted({c.name for c in cases})}"
            )
        cases = [c for c in cases if c.name in wanted]
    device = _device()
    name = args.name or (device + ("-quick" if args.quick else "-sweep" if lengths else ""))
    report = {
        "machine": _machine(),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "timing": "median of repeats after one warm-up; mx.eval then mx.synchronize",
        "results": [],
    }
    todo = [(c, p) for c in cases for p in c.paths if device in p.devices]
    done = 0
    for case in cases:
        entry = {
            "case": case.name,
            "kind": case.kind,
            "description": case.description,
            "shapes": case.shapes,
            "paths": [],
        }
        for path in case.paths:
            if device not in path.devices:
                continue
            done += 1
            tag = f"[{done}/{len(todo)}] {case.name} L={case.shapes['L']} {path.name}"
            item = {"path": path.name, "ours": path.ours}
            if not path.available():
                item["skipped"] = "not installed"
            elif path.loop and (args.no_loops or case.shapes["L"] > args.max_loop_length):
                item["skipped"] = "token loop, skipped at this L"
            elif args.exclude and any(x in path.name for x in args.exclude.split(",")):
                item["skipped"] = "excluded"
            if "skipped" in item:
                print(f"{tag}: {item['skipped']}", file=sys.stderr, flush=True)
                entry["paths"].append(item)
                continue
            print(f"{tag} ...", end="", file=sys.stderr, flush=True)
            start = time.perf_counter()
            try:
                item.update(measure(case, path, dtype, args.repeats, args.budget))
            except Exception as error:  # a peer that cannot run these shapes
                item["skipped"] = f"error: {type(error).__name__}: {error}"[:200]
            print(
                f" {time.perf_counter() - start:.0f}s "
                + (
                    f"fwd {item['fwd']['median_ms']:.1f} ms, fwd+bwd "
                    f"{item['fwd_bwd']['median_ms']:.1f} ms"
                    if "fwd" in item
                    else item["skipped"]
                ),
                file=sys.stderr,
                flush=True,
            )
            entry["paths"].append(item)
        report["results"].append(entry)
    if hasattr(os, "getloadavg"):
        report["machine"]["loadavg_end"] = os.getloadavg()
    print("\n" + table(report["results"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Dispatch check: the kernel against the fallback around ``auto``'s crossover.

    python benchmarks/crossover.py [--only SUBSTR,...] [--rounds 3] [--repeats 5]

For ``ssd`` and ``gla`` shapes on both sides of the bounds in
``chassis.large_state_crossover`` (bf16, decays per head: the fallback's
chunks on matrix tiles), times forward+backward of ``impl="kernel"`` and
``impl="fallback"`` in alternating rounds in one process, and prints per
shape the state updates the dispatch counts, both paths' rounds, the path
``auto`` takes (``recurops.explain``) and whether the other one was faster
in every round. Rerun it on the GPU after a change to either path's speed:
docs/kernels.md "Dispatch" holds its tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).parent))
import gpu  # noqa: E402

import recurops  # noqa: E402

# (kind, shape) around the tiled bound (1.8e7 updates) and the plain one (1.2e8)
SHAPES = [
    ("gla", dict(batch=1, length=256, heads=8, dk=64, dv=64)),  # 0.08e8 updates
    ("ssd", dict(batch=1, length=512, heads=12, p=64, n=16)),  # 0.06e8
    ("ssd", dict(batch=2, length=512, heads=12, p=64, n=16)),  # 0.13e8
    ("gla", dict(batch=2, length=256, heads=8, dk=64, dv=64)),  # 0.17e8
    ("ssd", dict(batch=3, length=512, heads=12, p=64, n=16)),  # 0.19e8, issue #3's small ssd shape
    ("gla", dict(batch=1, length=512, heads=12, dk=64, dv=64)),  # 0.25e8
    ("ssd", dict(batch=2, length=256, heads=8, p=64, n=128)),  # 0.34e8
    ("gla", dict(batch=1, length=1024, heads=8, dk=64, dv=64)),  # 0.34e8
    ("gla", dict(batch=2, length=512, heads=12, dk=64, dv=64)),  # 0.50e8
    ("ssd", dict(batch=2, length=512, heads=12, p=64, n=64)),  # 0.50e8
    ("ssd", dict(batch=8, length=1024, heads=8, p=64, n=16)),  # 0.67e8
    ("gla", dict(batch=3, length=512, heads=12, dk=64, dv=64)),  # 0.75e8
    ("ssd", dict(batch=2, length=1024, heads=24, p=64, n=32)),  # 1.0e8
    ("gla", dict(batch=1, length=512, heads=16, dk=128, dv=128)),  # 1.3e8
    ("ssd", dict(batch=3, length=2048, heads=4, p=64, n=128)),  # 2.0e8
]
QUICK = [("gla", dict(batch=1, length=64, heads=2, dk=16, dv=16)),
         ("ssd", dict(batch=1, length=64, heads=2, p=16, n=16))]


def cases(quick: bool = False):
    """``(name, kind, inputs, updates)`` for each shape: ``updates`` is the
    state elements over all heads and batch rows times ``L``, the dispatch's
    measure of the kernel's work."""
    found = []
    for kind, dims in QUICK if quick else SHAPES:
        if kind == "ssd":
            name, _, inputs, *_ = gpu.ssd_case(**dims)
            state = dims["p"] * dims["n"]
        else:
            name, _, inputs, *_ = gpu.gla_case(**dims)
            state = dims["dk"] * dims["dv"]
        updates = state * dims["batch"] * dims["heads"] * dims["length"]
        found.append((name, kind, inputs, updates))
    return found


def run(found, rounds: int, repeats: int, impls=("kernel", "fallback")) -> list[dict]:
    """Time forward+backward of each of ``impls`` on each case, in
    alternating rounds; one row a case, printed as it is measured."""
    rows = []
    for name, kind, inputs, updates in found:
        mx.eval(inputs)
        trains = {impl: gpu.mlx_pair(
            lambda *a, i=impl, k=kind: recurops.scan(k, *a, impl=i)[0], inputs)[1]
            for impl in impls}
        times = {impl: [] for impl in impls}
        for _ in range(rounds):
            for impl, train in trains.items():
                times[impl].append(gpu.timed(train, repeats) * 1e3)
        auto = recurops.explain(kind, *inputs).path
        other = next(impl for impl in impls if impl != auto) if auto in impls else None
        slower = other is not None and max(times[other]) < min(times[auto])
        row = {"case": name, "updates": updates, "auto": auto, "auto_slower": slower,
               **{f"{impl}_ms": times[impl] for impl in impls}}
        rows.append(row)
        spans = "  ".join(f"{impl} {min(times[impl]):.2f}-{max(times[impl]):.2f} ms"
                          for impl in impls)
        flag = f"  <- {other} faster in every round" if slower else ""
        print(f"{name}: {updates / 1e8:.2f}e8 updates  {spans}  auto: {auto}{flag}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    wanted = args.only.split(",")
    found = [case for case in cases(args.quick) if any(w in case[0] for w in wanted)]
    return run(found, args.rounds, args.repeats)


if __name__ == "__main__":
    main()

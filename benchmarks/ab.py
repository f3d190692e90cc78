"""A/B: the working tree's recurops against earlier revisions, in one process.

    python benchmarks/ab.py prepare REV [REV ...]      # here, with git: export each revision
    python benchmarks/ab.py run REV [REV ...] [--only SUBSTR,...] [--impl kernel]

``prepare`` exports each revision's ``recurops`` package into ``.ab/recurops_<hash>``
(an ignored folder: carry it to the device machine along with ``.device``), with its
kernels named ``ab<hash>_*`` so that MLX never confuses them with the working tree's.
``run`` times every tree on the GPU benchmark's cases (``gpu.cases``; ``--quick`` for
tiny ones) in alternating rounds, forward and forward+backward, and prints each
tree's training peak memory (``gpu.peak_training_bytes``, one forward+backward
from a cleared cache), its working set (``gpu.working_set_bytes``, the same
under a tight memory limit) and its gradients' largest difference from the working
tree's, relative to the largest gradient. Rounds alternate so that a slow
stretch of the machine falls on every tree alike; the trees' own rounds show
the noise.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).parent))
import gpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / ".ab"
KERNEL_NAME = 'name=f"recurops_'  # how chassis.build names the kernels it compiles


def short_hash(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def prepare(rev: str) -> Path:
    """Export ``rev``'s ``recurops`` into ``.ab/recurops_<hash>``, kernels renamed."""
    tag = short_hash(rev)
    target = FOLDER / f"recurops_{tag}"
    shutil.rmtree(target, ignore_errors=True)
    FOLDER.mkdir(exist_ok=True)
    archive = subprocess.run(["git", "archive", f"--prefix={target.name}/", f"{rev}:recurops"],
                             cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(FOLDER)], input=archive, check=True)
    chassis = target / "kernels" / "chassis.py"
    source = chassis.read_text()
    if source.count(KERNEL_NAME) != 1:
        raise SystemExit(f"{rev}: cannot find how {chassis} names its kernels ({KERNEL_NAME})")
    chassis.write_text(source.replace(KERNEL_NAME, f'name=f"ab{tag}_'))
    return target


def trees(revs: list[str]) -> dict:
    """``{"tree": recurops, <hash>: that revision's package, ...}`` (prepared before)."""
    import recurops

    sys.path.insert(0, str(FOLDER))
    found = {"tree": recurops}
    for rev in revs:
        tag = rev if (FOLDER / f"recurops_{rev}").exists() else short_hash(rev)
        if not (FOLDER / f"recurops_{tag}").exists():
            raise SystemExit(f"{rev}: run `python benchmarks/ab.py prepare {rev}` first")
        found[tag] = importlib.import_module(f"recurops_{tag}")
    return found


def _gradients(package, kind, inputs, impl):
    def loss(*arrays):
        return (package.scan(kind, *arrays, impl=impl)[0].astype(mx.float32) ** 2).sum()

    return mx.grad(loss, tuple(range(len(inputs))))(*inputs)


def _largest_difference(got, want) -> float:
    worst = 0.0
    for a, b in zip(got, want):
        a, b = a.astype(mx.float32), b.astype(mx.float32)
        worst = max(worst, (mx.abs(a - b).max() / (mx.abs(b).max() + 1e-30)).item())
    return worst


def run(packages: dict, cases, impl: str, rounds: int, repeats: int) -> list[dict]:
    results = []
    for name, kind, inputs, *_ in cases:
        mx.eval(inputs)
        print(f"\n== {name}, impl={impl}", flush=True)
        times = {label: {"fwd_ms": [], "fwd_bwd_ms": []} for label in packages}
        pairs = {label: gpu.mlx_pair(
            lambda *a, p=package, k=kind: p.scan(k, *a, impl=impl)[0], inputs)
            for label, package in packages.items()}
        for _ in range(rounds):
            for label, (fwd, train) in pairs.items():
                times[label]["fwd_ms"].append(gpu.timed(fwd, repeats) * 1e3)
                times[label]["fwd_bwd_ms"].append(gpu.timed(train, repeats) * 1e3)
        # every tree's memory before any gradients for the comparison are alive
        memory = {label: (gpu.peak_training_bytes(train), gpu.working_set_bytes(train))
                  for label, (_, train) in pairs.items()}
        want = _gradients(packages["tree"], kind, inputs, impl)
        for label, package in packages.items():
            row = times[label]
            peak, working = memory[label]
            diff = _largest_difference(_gradients(package, kind, inputs, impl), want)
            print(f"  {label:8s} fwd {_rounds_text(row['fwd_ms'])} ms  fwd+bwd "
                  f"{_rounds_text(row['fwd_bwd_ms'])} ms  peak {peak / 1e6:.0f} MB  "
                  f"working set {working / 1e6:.0f} MB  "
                  f"gradients off the tree's by {diff:.1e}", flush=True)
            results.append({"case": name, "tree": label, **row, "peak_bytes": peak,
                            "working_set_bytes": working, "gradient_difference": diff})
    return results


def _rounds_text(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:7.3f}" if high - low < 5e-4 else f"{low:.3f}-{high:.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="export revisions into .ab/ (needs git)")
    prep.add_argument("revs", nargs="+")
    timing = sub.add_parser("run", help="time the working tree against prepared revisions")
    timing.add_argument("revs", nargs="+")
    timing.add_argument("--only", default="", help="comma-separated substrings of case names")
    timing.add_argument("--impl", default="auto", choices=("auto", "kernel", "fallback"))
    timing.add_argument("--quick", action="store_true", help="tiny shapes")
    timing.add_argument("--rounds", type=int, default=2)
    timing.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        for rev in args.revs:
            print(prepare(rev).relative_to(ROOT))
        return None
    wanted = args.only.split(",")
    cases = [case for case in gpu.cases(args.quick) if any(w in case[0] for w in wanted)]
    return run(trees(args.revs), cases, args.impl, args.rounds, args.repeats)


if __name__ == "__main__":
    main()

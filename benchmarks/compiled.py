"""What ``mx.compile`` of the caller's function gains over plain calls.

    python benchmarks/compiled.py [--quick] [--out compiled.json]

Times forward and forward+backward of ``recurops.scan(..., impl="auto")``
at the large ``ssd``/``gla`` shapes of the GPU benchmark (small ones with
``--quick``), plain and wrapped in ``mx.compile`` (which fuses the chunked
fallback's elementwise passes there), in one process on the default device.
"""

from __future__ import annotations

import argparse
import json

import mlx.core as mx

import recurops

try:
    from gpu import _card, gla_case, mlx_pair, peak_training_bytes, ssd_case, timed
except ImportError:  # run as benchmarks/compiled.py from the root
    from benchmarks.gpu import _card, gla_case, mlx_pair, peak_training_bytes, ssd_case, timed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    cases = ((ssd_case(2, 256, 4, 64, 16), gla_case(2, 256, 4, 64, 64)) if args.quick else
             (ssd_case(8, 2048, 32, 64, 128), gla_case(8, 2048, 16, 128, 128)))
    rows = []
    for name, kind, inputs, *_ in cases:
        def scan(*a, kind=kind):
            return recurops.scan(kind, *a)[0]

        def grad(*a, scan=scan):  # the gradient mlx_pair takes, compiled whole
            return mx.grad(lambda *b: scan(*b).astype(mx.float32).sum(), tuple(range(len(a))))(*a)

        compiled_fwd, compiled_grad = mx.compile(scan), mx.compile(grad)
        paths = {"plain": mlx_pair(scan, inputs),
                 "mx.compile": (lambda f=compiled_fwd, a=inputs: mx.eval(f(*a)),
                                lambda g=compiled_grad, a=inputs: mx.eval(g(*a)))}
        for label, (f, t) in paths.items():
            row = {"case": name, "impl": f"recurops auto, {label}",
                   "fwd_ms": timed(f, args.repeats) * 1e3,
                   "fwd_bwd_ms": timed(t, args.repeats) * 1e3,
                   "peak_MB": peak_training_bytes(t) / 1e6}
            rows.append(row)
            print(f"{name:52s} {label:10s} fwd {row['fwd_ms']:7.2f} ms  "
                  f"fwd+bwd {row['fwd_bwd_ms']:7.2f} ms  peak {row['peak_MB']:8.0f} MB",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": str(mx.default_device()), "card": _card(), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()

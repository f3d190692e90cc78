"""Chunk-length sweep of the chunked fallback (``ssd``/``gla``), and a stage profile.

    python benchmarks/chunk_sweep.py [--chunks 16,32,64,128] [--out sweep.json]

Times forward and forward+backward of ``impl="fallback"`` and its training
peak memory at each chunk length, on the default device, for the large and
small ``ssd``/``gla`` shapes of the GPU benchmark; then times each stage of
the scalar-gate chunked forward and backward separately (``--stages``), to
show where the time goes. It chose ``CHUNK`` per device type in
``recurops/fallback/scalar_chunked.py``.
"""

from __future__ import annotations

import argparse
import json
import platform

import mlx.core as mx

import recurops
from recurops.fallback import scalar_chunked as sc

try:
    from gpu import gla_case, mlx_pair, peak_training_bytes, ssd_case, timed
except ImportError:  # run as benchmarks/chunk_sweep.py from the root
    from benchmarks.gpu import gla_case, mlx_pair, peak_training_bytes, ssd_case, timed


def sweep(chunks):
    rows = []
    for case in (ssd_case(8, 2048, 32, 64, 128), gla_case(8, 2048, 16, 128, 128),
                 ssd_case(3, 512, 12, 64, 16), gla_case(3, 512, 12, 64, 64)):
        name, kind, inputs = case[:3]
        device = "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
        default = sc.CHUNK[device]
        for chunk in chunks:
            sc.CHUNK[device] = chunk
            fwd, train = mlx_pair(
                lambda *a, kind=kind: recurops.scan(kind, *a, impl="fallback")[0], inputs)
            row = {"case": name, "chunk": chunk, "fwd_ms": timed(fwd) * 1e3,
                   "fwd_bwd_ms": timed(train) * 1e3, "peak_MB": peak_training_bytes(train) / 1e6}
            rows.append(row)
            print(f"{name:60s} chunk {chunk:4d}  fwd {row['fwd_ms']:8.3f} ms  "
                  f"fwd+bwd {row['fwd_bwd_ms']:8.3f} ms  peak {row['peak_MB']:8.1f} MB", flush=True)
        sc.CHUNK[device] = default
    return rows


def stages(chunk, z=8, length=2048, dk=128, r=32, dv=64):
    """Time each stage of the scalar-gate chunked form (the ssd B=8 shape)."""
    c, t = length // chunk, chunk
    mx.random.seed(0)
    q = mx.random.normal((z, c, t, dk))
    k = mx.random.normal((z, c, t, dk))
    v = mx.random.normal((z, c, t, r, dv))
    g = mx.random.uniform(0.9, 1.0, (z, c, t, r))
    h0 = mx.zeros((z, dk, r, dv))
    mm = mx.matmul
    decay, cum = sc._decays(g.transpose(0, 1, 3, 2))
    qk = mm(q, mx.contiguous(sc._tr(k)))
    a = cum[..., -1][:, :, None, :, None]
    local = mx.random.normal((z, c, dk, r, dv))
    dy = mx.random.normal(v.shape)
    mx.eval(decay, cum, qk, local, dy)
    y, final, before, raw, qk2 = sc._forward(mm, q, k, v, g, h0)
    mx.eval(y, final, before, raw, qk2)
    parts = {
        "decays": lambda: sc._decays(g.transpose(0, 1, 3, 2)),
        "qk": lambda: mm(q, mx.contiguous(sc._tr(k))),
        "intra": lambda: mm(qk[:, :, None] * decay, v.transpose(0, 1, 3, 2, 4)),
        "local": lambda: mm(mx.contiguous(sc._tr(k)), v.reshape(z, c, t, r * dv)),
        "states": lambda: sc._states(mm, a, local, h0),
        "raw": lambda: mm(q, local.reshape(z, c, dk, r * dv)),
        "forward (all)": lambda: sc._forward(mm, q, k, v, g, h0),
        "backward (all)": lambda: sc._backward(mm, q, k, v, g, h0, before, raw, qk2, dy, final),
    }
    out = {}
    for label, fn in parts.items():
        out[label] = timed(lambda fn=fn: mx.eval(fn())) * 1e3
        print(f"  chunk {chunk:4d}  {label:16s} {out[label]:8.3f} ms", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="16,32,64,128")
    parser.add_argument("--stages", action="store_true", help="also profile the stages")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    chunks = [int(x) for x in args.chunks.split(",")]
    result = {"machine": platform.platform(), "device": str(mx.default_device()),
              "mlx": mx.__version__, "sweep": sweep(chunks)}
    if args.stages:
        result["stages"] = {c: stages(c) for c in chunks}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

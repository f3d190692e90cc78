"""Chunk-length sweep of the chunked fallback (``ssd``/``gla``).

    python benchmarks/chunk_sweep.py [--chunks 16,32,64,128] [--out sweep.json]

Times forward and forward+backward of ``impl="fallback"`` and its training
peak memory at each chunk length, on the default device, for the large and
small ``ssd``/``gla`` shapes of the GPU benchmark. It chose ``CHUNK`` per
device type in ``recurops/fallback/scalar_chunked.py``.
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
    device = "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
    default = sc.CHUNK[device]
    for case in (ssd_case(8, 2048, 32, 64, 128), gla_case(8, 2048, 16, 128, 128),
                 ssd_case(3, 512, 12, 64, 16), gla_case(3, 512, 12, 64, 64)):
        name, kind, inputs = case[:3]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="16,32,64,128")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    chunks = [int(x) for x in args.chunks.split(",")]
    result = {"machine": platform.platform(), "device": str(mx.default_device()),
              "mlx": mx.__version__, "sweep": sweep(chunks)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

"""recurops against mamba_ssm's SSD (Mamba-2) kernels, where they can run: CUDA and Triton.

mamba_ssm is not installable without a CUDA build, so this file skips on a
CPU-only machine (and in ``nox -s conformance`` there); it runs where
``mamba_ssm.ops.triton.ssd_combined`` imports and PyTorch sees a GPU. The
mapping (docs/kinds/ssd.md):

    mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D, z, dt_bias,
                              initial_states, dt_softplus=True, dt_limit,
                              return_final_states=True)
    == y, s = scan("ssd", x, clamp(softplus(dt + dt_bias), *dt_limit), A, B, C,
                   state=initial_states)
       ((y + x * D[:, None]) * silu(z), s)

and the pure-PyTorch ``ssd_minimal_discrete(x * dt, A * dt, B, C, block_len)``
(one group per head) is ``scan("ssd", x, dt, A, B, C)``.

Triton's ``tl.dot`` rounds float32 operands to TF32 unless told otherwise;
``TRITON_F32_DEFAULT=ieee`` (set below, before any kernel compiles) asks for
full float32, which the 1e-4 comparison needs.
"""

import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import pytest  # noqa: E402
from harness import IMPLS, conform, gen, normal, uniform  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import recurops  # noqa: E402

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("mamba_ssm's kernels need a CUDA GPU", allow_module_level=True)
ssd_combined = pytest.importorskip("mamba_ssm.ops.triton.ssd_combined")
ssd_minimal = pytest.importorskip("mamba_ssm.modules.ssd_minimal")

seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)


def on_gpu(fn):
    """Run a torch function on CUDA copies of CPU leaves; outputs back on the CPU."""

    def run(*args):
        outs = fn(*(None if a is None else a.cuda() for a in args))
        return tuple(o.cpu() for o in outs)

    return run


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), L=st.integers(1, 40), G=st.integers(1, 2),
       heads_per_group=st.integers(1, 2), with_state=st.booleans(), with_z=st.booleans())
def test_mamba_chunk_scan_combined(impl, seed, b, L, G, heads_per_group, with_state, with_z):
    # Head and state sizes and the chunk length are fixed: Triton compiles and autotunes
    # its kernels for each, which takes minutes; lengths and head counts vary freely.
    P, N, chunk = 16, 16, 32
    rng = gen(seed)
    H = G * heads_per_group
    limit = (0.0, float("inf"))
    arrays = dict(
        x=normal(rng, b, L, H, P),
        dt=normal(rng, b, L, H),
        A=-uniform(rng, 0.05, 4, H),
        B=normal(rng, b, L, G, N),
        C=normal(rng, b, L, G, N),
        D=normal(rng, H),
        dt_bias=normal(rng, H),
    )
    if with_z:
        arrays["z"] = normal(rng, b, L, H, P)
    if with_state:
        arrays["h0"] = normal(rng, b, H, P, N)

    def ours(x, dt, A, B, C, D, dt_bias, *rest, impl):
        z = rest[0] if with_z else None
        h0 = rest[-1] if with_state else None
        dt = mx.clip(nn.softplus(dt + dt_bias), *limit)
        y, s = recurops.scan("ssd", x, dt, A, B, C, state=h0, impl=impl)
        y = y + x * D[:, None]
        return (y * nn.silu(z) if with_z else y), s

    @on_gpu
    def theirs(x, dt, A, B, C, D, dt_bias, *rest):
        z = rest[0] if with_z else None
        h0 = rest[-1] if with_state else None
        return ssd_combined.mamba_chunk_scan_combined(
            x, dt, A, B, C, chunk, D=D, z=z, dt_bias=dt_bias, initial_states=h0,
            dt_softplus=True, dt_limit=limit, return_final_states=True,
        )

    conform(ours, theirs, arrays, impl=impl, framework="torch")


@pytest.mark.parametrize("impl", IMPLS)
@given(seed=seeds, b=st.integers(1, 2), blocks=st.integers(1, 3),
       block_len=st.sampled_from([1, 4, 8]), H=small, P=small, N=small)
def test_ssd_minimal_discrete(impl, seed, b, blocks, block_len, H, P, N):
    rng = gen(seed)
    L = blocks * block_len
    arrays = dict(
        x=normal(rng, b, L, H, P),
        dt=uniform(rng, 0, 1, b, L, H),
        A=-uniform(rng, 0, 3, H),
        B=normal(rng, b, L, H, N),
        C=normal(rng, b, L, H, N),
    )

    def ours(x, dt, A, B, C, impl):
        return recurops.scan("ssd", x, dt, A, B, C, impl=impl)

    @on_gpu
    def theirs(x, dt, A, B, C):
        return ssd_minimal.ssd_minimal_discrete(x * dt[..., None], A * dt, B, C, block_len)

    conform(ours, theirs, arrays, impl=impl, framework="torch")

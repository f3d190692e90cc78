"""Fused kernels for ``"rotlru"``: ``z <- a (cos + i sin) z + x`` on (u, w) pairs.

One thread per channel pair; the adjoint of the rotation-scale ``M`` is its
transpose, ``a (cos - i sin)``.
"""

import mlx.core as mx

from .chassis import (
    KernelPath,
    Source,
    checkpointed,
    common_unsupported,
    in_one_dtype,
    lanes,
    launch,
    segments,
)

_PROLOGUE = """
    const int B = a_shape[0];
    const int L = a_shape[1];
    const int P = a_shape[2];
    const int NS = (L + SEG - 1) / SEG;
    const int tid = THREAD_ID;
    if (tid >= B * P) return;
    const int b = tid / P;
    const int p = tid % P;
"""

FORWARD = Source(
    "rotlru_fwd",
    inputs=("a", "c", "s", "x", "h0"),
    outputs=("y", "ckpt"),
    body=_PROLOGUE + """
    float u = h0[2 * tid];
    float w = h0[2 * tid + 1];
    int k = (b * (NS + 1)) * P + p;
    ckpt[2 * k] = u;
    ckpt[2 * k + 1] = w;
    for (int t = 0; t < L; ++t) {
        const int i = (b * L + t) * P + p;
        const float ac = static_cast<float>(a[i]) * static_cast<float>(c[i]);
        const float as = static_cast<float>(a[i]) * static_cast<float>(s[i]);
        const float nu = ac * u - as * w + static_cast<float>(x[2 * i]);
        w = as * u + ac * w + static_cast<float>(x[2 * i + 1]);
        u = nu;
        y[2 * i] = static_cast<T>(u);
        y[2 * i + 1] = static_cast<T>(w);
        if ((t + 1) % SEG == 0 || t == L - 1) {
            k = (b * (NS + 1) + (t + SEG) / SEG) * P + p;
            ckpt[2 * k] = u;
            ckpt[2 * k + 1] = w;
        }
    }
""",
)

BACKWARD = Source(
    "rotlru_bwd",
    inputs=("a", "c", "s", "x", "ckpt", "dy", "dfinal"),
    outputs=("da", "dc", "ds", "dx", "dh0"),
    body=_PROLOGUE + """
    float cu = dfinal[2 * tid];      // dLoss/d(u, w)[t] from steps after t
    float cw = dfinal[2 * tid + 1];
    float before_u[SEG];
    float before_w[SEG];
    for (int sg = NS - 1; sg >= 0; --sg) {
        const int t0 = sg * SEG;
        const int t1 = (t0 + SEG < L) ? t0 + SEG : L;
        const int k = (b * (NS + 1) + sg) * P + p;
        float u = ckpt[2 * k];
        float w = ckpt[2 * k + 1];
        for (int t = t0; t < t1; ++t) {
            const int i = (b * L + t) * P + p;
            before_u[t - t0] = u;
            before_w[t - t0] = w;
            const float ac = static_cast<float>(a[i]) * static_cast<float>(c[i]);
            const float as = static_cast<float>(a[i]) * static_cast<float>(s[i]);
            const float nu = ac * u - as * w + static_cast<float>(x[2 * i]);
            w = as * u + ac * w + static_cast<float>(x[2 * i + 1]);
            u = nu;
        }
        for (int t = t1 - 1; t >= t0; --t) {
            const int i = (b * L + t) * P + p;
            const float ai = static_cast<float>(a[i]);
            const float ci = static_cast<float>(c[i]);
            const float si = static_cast<float>(s[i]);
            const float gu = static_cast<float>(dy[2 * i]) + cu;
            const float gw = static_cast<float>(dy[2 * i + 1]) + cw;
            const float pu = before_u[t - t0];
            const float pw = before_w[t - t0];
            const float d_ac = gu * pu + gw * pw;  // dLoss/d(a cos)
            const float d_as = gw * pu - gu * pw;  // dLoss/d(a sin)
            dx[2 * i] = gu;
            dx[2 * i + 1] = gw;
            da[i] = ci * d_ac + si * d_as;
            dc[i] = ai * d_ac;
            ds[i] = ai * d_as;
            cu = ai * (ci * gu + si * gw);
            cw = ai * (ci * gw - si * gu);
        }
    }
    dh0[2 * tid] = cu;
    dh0[2 * tid + 1] = cw;
""",
)

SEG = 32


def _forward(a, c, s, x, state):
    batch, length, pairs = a.shape
    dtype, inputs = in_one_dtype(a, c, s, x)
    return launch(
        FORWARD,
        (*inputs, state),
        {"y": (x.shape, dtype),
         "ckpt": ((batch, segments(length, SEG) + 1, 2 * pairs), mx.float32)},
        threads=lanes(batch * pairs),
        template={"T": dtype, "SEG": SEG},
    )


def _backward(dy, dfinal, ckpt, a, c, s, x, state):
    dtype, inputs = in_one_dtype(a, c, s, x)
    f32 = mx.float32
    return launch(
        BACKWARD,
        (*inputs, ckpt, dy, dfinal),
        {"da": (a.shape, f32), "dc": (a.shape, f32), "ds": (a.shape, f32),
         "dx": (x.shape, f32), "dh0": (state.shape, f32)},
        threads=lanes(a.shape[0] * a.shape[2]),
        template={"T": dtype, "SEG": SEG},
    )


KERNEL = KernelPath(
    run=checkpointed(_forward, _backward),
    unsupported=lambda bound, arrays, backend: common_unsupported(arrays),
)

"""Fused pieces of the chunked matmul form (``fallback/scalar_chunked.py``) on a GPU.

The chunked form's matmuls run as MLX matmuls (tensor cores); what stays
are passes over whole arrays that MLX would run as several kernels each:

* ``pass_states``: the chunk states ``h[c] = a[c] h[c-1] + b[c]`` over the
  ``C`` chunks, one thread per state element, each reading ``b`` and writing
  the state before each chunk once;
* ``pass_cotangents``: its reverse, ``Y[c] = a[c] Y[c+1] + g[c]``, with the
  gradient of the decays ``a`` (sums of ``Y[c+1] * h[c]`` over the elements
  that share an ``a``) summed a warp at a time in the kernel;
* ``decays``: the within-chunk decay matrices ``D[t, s] = prod_{s<r<=t} g[r]``
  (products only, exact for gates of 0 and 1), one thread per column ``s``;
* ``row_dots``: ``(x * y).sum(-1)``, one warp per row;
* ``scaled_sum``: ``x * s[..., None] + y`` (the outputs from their two
  parts), one pass instead of a product and an add;
* ``gate_grad``: the gates' gradient from that of the decay matrices, one
  thread per gate, which rebuilds its column and row of the decays from the
  gates instead of reading them (the MLX code takes a product, a strided
  reduction and two matrix-vector products over the decay matrices).
* ``channel_scores`` and ``channel_scores_grad``: with one gate per key
  channel, the within-chunk scores ``A[t, s] = sum_k q[t,k] k[s,k] D_k[t, s]``
  and their backward (the gradients of ``q``, ``k`` and the gates), with the
  per-channel decays ``D_k`` built as running products in registers: the
  MLX code materializes them, ``[K, T, T]`` a chunk.

* ``chunk_states``, ``chunk_cotangents``, ``chunk_outputs``,
  ``chunk_scores_grad``, ``summed_state_products``,
  ``chunk_state_row_sums`` and ``chunk_scores``: with half-precision
  inputs and one gate per head, the chunk states, their cotangents, the
  chunks' outputs, the backward within the chunks (with the values' and
  the gates' gradients), the states' parts of the gradients of ``q`` and
  ``k`` (summed over the heads that share them), the row sums with the
  products of the rows and the states, and the scores ``q k^T`` once for
  the heads that share them, as block-level kernels on the warp-level
  matrix tiles (``chassis.TILES``: TF32 tensor cores on CUDA,
  ``simdgroup_matrix`` on Metal), which replace the matmuls and most of
  the passes of the forward and the backward.

Everything is float32, but for the values, the outputs and their
gradients, which the tile kernels read and write in their own dtype, heads
first or in the caller's time-first layout (``_value_layout``). ``a`` varies
along the leading state axes and is shared along the trailing ones: ``a [Z,
C, R]`` for states ``[Z, C, E]`` with ``R`` dividing ``E``, element ``e``
reading ``a[..., e // (E / R)]``.
"""

import math

import mlx.core as mx

from .chassis import THREADS_PER_GROUP, WARP, Source, lanes, launch

_STATES_PROLOGUE = """
    const int Z = b_shape[0];
    const int C = b_shape[1];
    const int E = b_shape[2];
    const int R = a_shape[2];
    const int tid = THREAD_ID;
"""

PASS_STATES = Source(
    "chunk_states",
    inputs=("a", "b", "h0"),
    outputs=("before", "final"),
    body=_STATES_PROLOGUE + """
    if (tid >= Z * E) return;
    const int z = tid / E;
    const int row = (tid % E) / (E / R);
    float h = h0[tid];
    for (int c = 0; c < C; ++c) {
        const int i = (z * C + c) * E + tid % E;
        before[i] = h;
        h = a[(z * C + c) * R + row] * h + b[i];
    }
    final[tid] = h;
""",
)

PASS_COTANGENTS = Source(
    "chunk_cotangents",
    inputs=("a", "b", "dfinal", "before"),
    outputs=("after", "dh0", "parts"),
    body=_STATES_PROLOGUE + """
    // b holds the cotangents g[c] of the states before each chunk
    if (tid - LANE_ID >= Z * E) return;  // whole warps only
    const bool active = tid < Z * E;
    const int z = active ? tid / E : 0;
    const int e = active ? tid % E : 0;
    const int row = e / (E / R);
    float y = active ? dfinal[tid] : 0.0f;
    for (int c = C - 1; c >= 0; --c) {
        const int i = (z * C + c) * E + e;
        float part = 0.0f;
        if (active) {
            after[i] = y;
            part = y * before[i];
        }
        if (PART == 32) {  // the warp's lanes share one a: its sum, by lane 0
            part = WARP_SUM(part);
            if (LANE_ID == 0) parts[i / 32] = part;
        } else if (active) {
            parts[i] = part;
        }
        if (active) y = a[(z * C + c) * R + row] * y + b[i];
    }
    if (active) dh0[tid] = y;
""",
)

DECAYS = Source(
    "chunk_decays",
    inputs=("g",),
    outputs=("decay",),
    body="""
    const int M = g_shape[0];
    const int T = g_shape[1];
    const int tid = THREAD_ID;
    if (tid >= M * T) return;
    const int m = tid / T;
    const int s = tid % T;
    float p = 1.0f;
    for (int t0 = 0; t0 < T; t0 += 8) {
        float gates[8];  // the next 8 gates first: independent loads
        for (int j = 0; j < 8; ++j) gates[j] = g[m * T + ((t0 + j < T) ? t0 + j : T - 1)];
        for (int j = 0; j < 8 && t0 + j < T; ++j) {
            const int t = t0 + j;
            if (t > s) p *= gates[j];
            decay[(m * T + t) * T + s] = (t >= s) ? p : 0.0f;
        }
    }
""",
)

ROW_DOTS = Source(
    "chunk_row_dots",
    inputs=("x", "y"),
    outputs=("dots",),
    body="""
    const int rows = x_shape[0];
    const int N = x_shape[1];
    const int row = THREAD_ID / 32;
    if (row >= rows) return;  // a warp a row: whole warps
    float sum = 0.0f;
    for (int n = LANE_ID; n < N; n += 32) sum += x[row * N + n] * y[row * N + n];
    sum = WARP_SUM(sum);
    if (LANE_ID == 0) dots[row] = sum;
""",
)

SCALED_SUM = Source(
    "chunk_scaled_sum",
    inputs=("x", "s", "y"),
    outputs=("out",),
    body="""
    const int rows = x_shape[0];
    const int N = x_shape[1];
    const int i = THREAD_ID;
    if (i >= rows * N) return;
    out[i] = x[i] * s[i / N] + y[i];
""",
)

GATE_GRAD = Source(
    "chunk_gate_grad",
    inputs=("g", "full", "dw", "dcum", "da", "cum"),
    outputs=("dg",),
    body="""
    // dg[r] = sum_t D[t,r] full[t,r-1] + D[T-1,r] sum_s dw[s] D[r-1,s]  (r >= 1)
    //       + cum[r-1] sum_t dcum'[t] D[t,r],  dcum' = dcum + e_{T-1} da, cum[-1] = 1
    // with the decays D[t, s] = prod_{s<q<=t} g[q] (0 for t < s) rebuilt
    // from the gates: column r as t grows, row r-1 as s falls
    const int M = g_shape[0];
    const int T = g_shape[1];
    const int tid = THREAD_ID;
    if (tid >= M * T) return;
    const int m = tid / T;
    const int r = tid % T;
    const int full0 = m * T * T + r - 1;
    float column = 1.0f;  // D[t, r]
    float via_cum = 0.0f;
    float via_decay = 0.0f;
    for (int t = r; t < T; ++t) {
        if (t > r) column *= g[m * T + t];
        via_cum += (t == T - 1 ? dcum[m * T + t] + da[m] : dcum[m * T + t]) * column;
        if (r > 0) via_decay += column * full[full0 + t * T];
    }
    float out = via_cum;
    if (r > 0) {
        float row = 1.0f;  // D[r-1, s]
        float via_w = 0.0f;
        for (int s = r - 1; s >= 0; --s) {
            via_w += dw[m * T + s] * row;
            row *= g[m * T + s];
        }
        out = cum[m * T + r - 1] * via_cum + via_decay + column * via_w;
    }
    dg[tid] = out;
""",
)


CHANNEL_SCORES = Source(
    "chunk_channel_scores",
    inputs=("q", "k", "g"),
    outputs=("scores", "qc", "kw", "a"),
    body="""
    // One thread per column s of a chunk, inputs channel-major ([M, K, STEPS]:
    // the warp's lanes read the same q[t] and g[t]), for each channel c
    //   A[t, s] += q[t,c] k[s,c] D[t,s],  D[t,s] = prod_{s<r<=t} g[r,c]
    // and the chunk's products  qc[s] = q[s] cum[s], kw[s] = k[s] w[s], a = cum[STEPS-1]
    // (cum[s] = prod_{r<=s} g[r], w[s] = D[STEPS-1, s]). Four channels at a time:
    // four independent chains of products.
    const int M = q_shape[0];
    const int K = q_shape[1];
    const int tid = THREAD_ID;
    if (tid >= M * STEPS) return;
    const int m = tid / STEPS;
    const int s = tid % STEPS;
    float acc[STEPS];
    #pragma unroll
    for (int t = 0; t < STEPS; ++t) acc[t] = 0.0f;
    for (int c0 = 0; c0 < K; c0 += 4) {
        int row[4];
        float key[4];
        float d[4];  // D[t, s]
        float cum[4];  // cum[min(t, s)]
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            row[j] = (m * K + (c0 + j < K ? c0 + j : K - 1)) * STEPS;
            key[j] = c0 + j < K ? k[row[j] + s] : 0.0f;
            d[j] = 1.0f;
            cum[j] = 1.0f;
        }
        #pragma unroll
        for (int t = 0; t < STEPS; ++t) {
            float sum = 0.0f;
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float gate = g[row[j] + t];
                if (t > s) d[j] *= gate;
                if (t <= s) cum[j] *= gate;
                sum += q[row[j] + t] * d[j] * key[j];
            }
            if (t >= s) acc[t] += sum;
        }
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (c0 + j < K) {
                qc[row[j] + s] = q[row[j] + s] * cum[j];
                kw[row[j] + s] = key[j] * d[j];
                if (s == STEPS - 1) a[m * K + c0 + j] = cum[j];
            }
        }
    }
    #pragma unroll
    for (int t = 0; t < STEPS; ++t) scores[(m * STEPS + t) * STEPS + s] = acc[t];
""",
)

CHANNEL_SCORES_GRAD = Source(
    "chunk_channel_scores_grad",
    inputs=("q", "k", "g", "dscores", "dqc", "dkw", "da"),
    outputs=("dq", "dk", "dg"),
    body="""
    // The backward of chunk_channel_scores, one thread per chunk and key channel
    // c (arrays [M, STEPS, K]; D = D_c), from dA = dscores and the gradients
    // of qc, kw and a:
    //   dq[t] = sum_{s<=t} dA[t,s] k[s] D[t,s] + dqc[t] cum[t]
    //   dk[s] = sum_{t>=s} dA[t,s] q[t] D[t,s] + dkw[s] w[s]
    //   dg[r] = cum[r-1] sum_{t>=r} dcum[t] D[t,r]
    //         + sum_{s<r<=t} dA[t,s] q[t] k[s] D[t,r] D[r-1,s]
    //         + w[r] sum_{s<r} dw[s] D[r-1,s]
    // with dcum[t] = dqc[t] q[t] (+ da at t = STEPS-1) and dw[s] = dkw[s] k[s]:
    // products only, each sum by a running product up or down the chunk.
    const int M = q_shape[0];
    const int K = q_shape[2];
    const int tid = THREAD_ID;
    if (tid >= M * K) return;
    const int m = tid / K;
    const int first = m * STEPS * K + tid % K;  // element (t, c) at first + t * K
    const int row0 = m * STEPS * STEPS;  // dA[t, s] at row0 + t * STEPS + s
    float gate[STEPS];
    float dg_sum[STEPS];
    #pragma unroll
    for (int t = 0; t < STEPS; ++t) gate[t] = g[first + t * K];
    // dg through cum: sum_{t>=r} dcum[t] D[t,r] down r, then times cum[r-1] up r
    float e = da[m * K + tid % K];
    #pragma unroll
    for (int r = STEPS - 1; r >= 0; --r) {
        e += dqc[first + r * K] * q[first + r * K];
        dg_sum[r] = e;
        e *= gate[r];
    }
    float cum = 1.0f;
    #pragma unroll
    for (int r = 0; r < STEPS; ++r) {
        dg_sum[r] *= cum;
        cum *= gate[r];
    }
    // dq and dg through the scores: for each t, y[r] = sum_{s<r} dA[t,s] k[s]
    // D[r-1,s] up r (y[t+1] is dq[t]'s first part), then D[t,r] down r
    cum = 1.0f;
    #pragma unroll
    for (int t = 0; t < STEPS; ++t) {
        const float qt = q[first + t * K];
        float y[STEPS + 1];
        y[0] = 0.0f;
        #pragma unroll
        for (int r = 0; r <= t; ++r) {
            y[r + 1] = gate[r] * y[r] + dscores[row0 + t * STEPS + r] * k[first + r * K];
        }
        cum *= gate[t];
        dq[first + t * K] = y[t + 1] + dqc[first + t * K] * cum;
        float d = qt;  // q[t] D[t, r]
        #pragma unroll
        for (int r = t; r >= 0; --r) {
            dg_sum[r] += d * y[r];
            d *= gate[r];
        }
    }
    // dk with D[t,s] up t (ending at w[s]), and dg through w: f = sum_{s<r} dw[s] D[r-1,s] up r
    float f = 0.0f;
    #pragma unroll
    for (int s = 0; s < STEPS; ++s) {
        float d = 1.0f;  // D[t, s]
        float sum = 0.0f;
        #pragma unroll
        for (int t = s; t < STEPS; ++t) {
            if (t > s) d *= gate[t];
            sum += dscores[row0 + t * STEPS + s] * q[first + t * K] * d;
        }
        const float dkw_s = dkw[first + s * K];
        dk[first + s * K] = sum + dkw_s * d;
        dg[first + s * K] = dg_sum[s] + d * f;
        f = gate[s] * f + dkw_s * k[first + s * K];
    }
""",
)


def _layout(array: str, heads: str, row: str, width: str) -> str:
    """Body text that declares how ``array`` (and the arrays laid out as it)
    is laid out: heads first ``[Z, C, CH, width]``, or time first ``[B, C,
    CH, H, width]`` (baked ``TF``; head ``b * H + h`` is head ``z``, so that
    the caller's ``[B, L, H, width]`` needs no copy). Declares ``heads`` (H,
    time first) and ``row``, the step from a row of a chunk to the next."""
    return f"""
    const int {heads} = TF ? {array}_shape[3] : 1;
    const int {row} = TF ? {heads} * {width} : {width};
"""


def _offset(heads: str, width: str, z: str, c: str) -> str:
    """The offset of the first row of chunk ``c`` of head ``z`` in a
    ``_layout``."""
    return (f"(TF ? ((({z}) / {heads} * C + ({c})) * CH * {heads} + ({z}) % {heads}) * {width}"
            f" : (({z}) * C + ({c})) * CH * {width})")


def _value_layout(array: str) -> str:
    """``_layout`` of the values, the outputs and their gradients (``VD``
    channels, heads ``zr``)."""
    return _layout(array, "HV", "v_row", "VD")


def _value_at(zr: str, c: str) -> str:
    return _offset("HV", "VD", zr, c)


def _row_layout(array: str) -> str:
    """``_layout`` of ``q`` and ``k`` and their gradients (``KD`` channels,
    shared by the ``R`` heads ``zr`` of group ``zr / R``)."""
    return _layout(array, "HQ", "qk_row", "KD")


def _row_at(z: str, c: str) -> str:
    return _offset("HQ", "KD", z, c)


# A threadgroup of four warps a chunk and head (``chunk``: z, head and chunk
# ``c`` flattened), warp w owning rows 16w..16w+15 of the chunk's steps, and
# where the chunk's rows of q and k, of the per-head v-shaped arrays and of
# the gates start.
_CHUNK_THREADS = """
    const int Z = HEADS_shape[0];
    const int R = HEADS_shape[1];
    const int C = HEADS_shape[2];
    const int tid = THREAD_ID % 128;
    const int chunk = THREAD_ID / 128;
    if (chunk >= Z * R * C) return;  // a whole threadgroup: no barrier is left half-met
    const int warp = tid / 32;
    const bool rows = warp < CH / 16;  // this warp owns rows (uniform in the warp)
    const int c = chunk % C;
    const int zr = chunk / C;
    const int g_at = chunk * CH;
""" + _value_layout("v") + _row_layout("q") + f"""    const int v_at = {_value_at("zr", "c")};
    const int qk_at = {_row_at("zr / R", "c")};
"""


def _chunk_threads(heads: str) -> str:
    """``_CHUNK_THREADS`` with ``R`` read from ``heads``, an input laid out
    heads first ``[Z, R, C, ...]``."""
    return _CHUNK_THREADS.replace("HEADS", heads)


def _scores(left: str, right: str, at: str, width: str, stride: str, piece: str, base: str,
            split: bool = False) -> str:
    """Body text that computes the scores ``left right^T`` of a chunk (both
    ``[CH, width]`` rows from ``at``, ``stride`` apart) into the accumulators
    ``score[CH / 8]`` of the warps that own rows (``rows``), only the tiles on
    or below the diagonal, over pieces of ``piece`` channels staged at
    ``sm[base]`` (``2 * CH * LDS`` floats), loading the next piece while it
    multiplies this one.
    ``split``: float32-accurate products (``chassis.TILES``' split ones)."""
    suffix = "_split" if split else ""
    return """
    // the scores @L@ @R@^T over pieces of @P@ channels; only tiles on or below the diagonal
    for (int j = 0; j < CH / 8; ++j) recurops_tile_zero(score[j]);
    {
        constexpr int N = CH * @P@ / 128;  // a thread's share of a piece of @L@ (and of @R@)
        float ln[N];
        float rn[N];
        for (int e = 0; e < N; ++e) {
            const int i = tid + e * 128;
            ln[e] = @L@[@AT@ + (i / @P@) * @ST@ + i % @P@];
            rn[e] = @R@[@AT@ + (i / @P@) * @ST@ + i % @P@];
        }
        for (int k0 = 0; k0 < @W@; k0 += @P@) {
            if (k0 > 0) BARRIER();  // the products are done with the last piece
            for (int e = 0; e < N; ++e) {
                const int i = tid + e * 128;
                sm[@B@ + (i / @P@) * LDS + i % @P@] = ln[e];
                sm[@B@ + (CH + i / @P@) * LDS + i % @P@] = rn[e];
            }
            BARRIER();
            if (k0 + @P@ < @W@) {
                for (int e = 0; e < N; ++e) {
                    const int i = tid + e * 128;
                    ln[e] = @L@[@AT@ + (i / @P@) * @ST@ + k0 + @P@ + i % @P@];
                    rn[e] = @R@[@AT@ + (i / @P@) * @ST@ + k0 + @P@ + i % @P@];
                }
            }
            if (rows) {
                for (int ks = 0; ks < @P@; ks += 8) {
                    recurops_tile_a@S@ fa;
                    recurops_load_a@S@(fa, sm + @B@ + warp * 16 * LDS + ks, LDS);
                    for (int j = 0; j < CH / 8; ++j) {
                        if (j < 2 * warp + 2) {
                            recurops_tile_mma@S@(score[j], fa, sm + @B@ + (CH + j * 8) * LDS + ks,
                                                 LDS, true);
                        }
                    }
                }
            }
        }
    }
""".replace("@L@", left).replace("@R@", right).replace("@AT@", at).replace(
        "@ST@", stride).replace("@W@", width).replace("@P@", piece).replace(
        "@B@", base).replace("@S@", suffix)


def _values_then_states(values: str | None, scaled: str, scale: str | None, states: str,
                        a_at: str, b_at: str, transposed: bool = False) -> str:
    """Body text that adds to the accumulators ``out[VD / 8]`` of the warps
    that own rows (``rows``) ``P values`` (``P^T values`` if ``transposed``;
    ``P [CH][LDP]`` at ``sm[0]``, lower triangular, ``values`` the chunk's
    ``[CH, VD]`` rows from ``v_at``), then ``(scale * scaled) states``
    (``scaled`` the chunk's ``[CH, KD]`` rows from ``qk_at``, ``scale[CH]``
    in threadgroup memory, ``states`` the chunk's ``[KD, VD]`` from
    ``s_at``), over pieces of 16: rows of ``values`` or of ``states`` staged
    at ``sm[b_at]`` (stride ``LDV``), channels of ``scale * scaled`` at
    ``sm[a_at]`` (stride ``LDA``), loading the next piece while it
    multiplies this one. ``vn[VN]`` holds the first piece of ``values`` on
    entry; the caller defines ``LDA``, ``LDV`` and ``VN = VD / 8``. Without
    ``values`` only the states' part (its first piece loaded here), without
    ``scale`` the rows unscaled."""
    states_piece = """{
                const int k0 = (@NEXT@ - INTRA) * 16;
                for (int e = 0; e < AN; ++e) {
                    const int i = tid + e * 128;
                    an[e] = @SCALED@[qk_at + (i / 16) * qk_row + k0 + i % 16];
                }
                for (int e = 0; e < VN; ++e) {
                    const int i = tid + e * 128;
                    vn[e] = @STATES@[s_at + (k0 + i / VD) * VD + i % VD];
                }
            }"""
    if values is None:
        intra, takes, load_p = "0", "true", ""
        first = states_piece.replace("@NEXT@", "0")
        loads = "if (piece + 1 < PIECES) " + states_piece
    else:
        intra, first = "CH / 16", ""
        loads = """if (piece + 1 < INTRA) {
                for (int e = 0; e < VN; ++e) {
                    const int i = tid + e * 128;
                    vn[e] = @VALUES@[v_at + ((piece + 1) * 16 + i / VD) * v_row + i % VD];
                }
            } else if (piece + 1 < PIECES) """ + states_piece
        if transposed:  # warp w's rows s take the rows t >= s of P
            takes = "piece >= warp"
            load_p = "recurops_load_a_t(fa, sm + (piece * 16 + ks) * LDP + warp * 16, LDP);"
        else:  # P is zero right of the warp's rows
            takes = "piece <= warp"
            load_p = "recurops_load_a(fa, sm + warp * 16 * LDP + piece * 16 + ks, LDP);"
        load_p = f"if (piece < INTRA) {{ {load_p} }} else "
    return """
    {
        constexpr int INTRA = @INTRA@;
        constexpr int PIECES = INTRA + KD / 16;
        constexpr int AN = CH / 8;  // a thread's share of a piece of the scaled rows
        float an[AN];
        @FIRST@
        for (int piece = 0; piece < PIECES; ++piece) {
            BARRIER();  // P is complete, or the last piece's products are done
            if (piece >= INTRA) {
                for (int e = 0; e < AN; ++e) {
                    const int i = tid + e * 128;
                    sm[@A@ + (i / 16) * LDA + i % 16] = an[e]@TIMES@;
                }
            }
            for (int e = 0; e < VN; ++e) {
                const int i = tid + e * 128;
                sm[@B@ + (i / VD) * LDV + i % VD] = vn[e];
            }
            BARRIER();
            // the next piece's loads
            @LOADS@
            if (rows && (piece >= INTRA || @TAKES@)) {
                for (int ks = 0; ks < 16; ks += 8) {
                    recurops_tile_a fa;
                    @LOADP@recurops_load_a(fa, sm + @A@ + warp * 16 * LDA + ks, LDA);
                    for (int j = 0; j < VD / 8; ++j) {
                        recurops_tile_mma(out[j], fa, sm + @B@ + ks * LDV + j * 8, LDV, false);
                    }
                }
            }
        }
    }
""".replace("@FIRST@", first).replace("@LOADS@", loads).replace("@NEXT@", "piece + 1").replace(
        "@INTRA@", intra).replace("@TIMES@", f" * {scale}[i / 16]" if scale else "").replace(
        "@VALUES@", values or "").replace("@SCALED@", scaled).replace(
        "@STATES@", states).replace("@A@", a_at).replace("@B@", b_at).replace(
        "@TAKES@", takes).replace("@LOADP@", load_p)


def _rows_out(each: str) -> str:
    """Body text that hands the accumulators ``out[VD / 8]`` on a warp's 16
    rows at a time through threadgroup memory (``sm``, stride ``LDY``): after
    each warp's store, every thread runs ``each`` with the rows ``piece *
    16`` on at ``sm[0]``."""
    return """
    for (int piece = 0; piece < CH / 16; ++piece) {
        BARRIER();  // the products (or the last piece's reads) are done with the array
        if (warp == piece) {
            for (int j = 0; j < VD / 8; ++j) recurops_tile_store(out[j], sm, j * 8, LDY);
        }
        BARRIER();""" + each + """
    }
"""


# The scores q k^T of a chunk (z, c), float32-accurate (split products), a
# threadgroup of four warps on the matrix tiles, for the R > 1 heads that
# share q and k to read instead of each computing them: only the tiles on or
# below the diagonal are written (the rest of scores is never read).
CHUNK_SCORES = Source(
    "chunk_scores",
    inputs=("q", "k"),
    outputs=("scores",),
    body="""
    // q, k [Z, C, CH, KD] or time first ([B, C, CH, G, KD], Z = B G); scores [Z, C, CH, CH];
    // threadgroups of 128 threads (chassis.THREADS_PER_GROUP)
    constexpr int KP = 16;       // channels a piece
    constexpr int LDS = KP + 4;  // their row stride
    SHARED float sm[2 * CH * LDS];
    const int C = q_shape[1];
    const int Z = TF ? q_shape[0] * q_shape[3] : q_shape[0];
""" + _row_layout("q") + """    const int tid = THREAD_ID % 128;
    const int chunk = THREAD_ID / 128;  // z * C + c
    if (chunk >= Z * C) return;  // a whole threadgroup: no barrier is left half-met
    const int warp = tid / 32;
    const bool rows = warp < CH / 16;  // this warp owns rows (uniform in the warp)
    const int qk_at = """ + _row_at("chunk / C", "chunk % C") + """;
    recurops_tile score[CH / 8];
""" + _scores("q", "k", "qk_at", "KD", "qk_row", "KP", "0", split=True) + """
    if (rows) {
        for (int j = 0; j < CH / 8; ++j) {
            if (j < 2 * warp + 2) {
                recurops_tile_store(score[j], scores, (chunk * CH + warp * 16) * CH + j * 8, CH);
            }
        }
    }
""",
)

# Where the chunk's [CH, CH] block of its group's scores (or of their
# gradient) starts.
_GROUP_AT = "    const int group_at = ((zr / R) * C + c) * CH * CH;\n"


# The chunk's outputs, one threadgroup of four warps a chunk and head, on the
# warp-level matrix tiles (chassis.TILES; TF32 on CUDA). Warp w owns output
# rows 16w..16w+15. Threadgroup memory (at most 8192 floats, Metal's 32 KB),
# one array used in turn as
#   q and k pieces of KP channels (the scores q k^T, held in the accumulators;
#       read from chunk_scores instead with from_scores),
#   P [CH][CH+4] (the scores times the decays), then 16 rows of v, or a
#       16-channel piece of q * cum and 16 rows of S, after it;
#   16 rows of the outputs at a time, cast to y's dtype T on the way out;
# and cum [CH], the chunk's gate products. Each piece's loads for the next
# piece are issued before its products. Row strides are padded so the
# fragments' lanes hit distinct banks.
def _chunk_outputs(from_scores: bool) -> Source:
    if from_scores:
        scores = _GROUP_AT
        score_at = "scores[group_at + t * CH + s]"
    else:
        scores = "\n    recurops_tile score[CH / 8];\n" + _scores(
            "q", "k", "qk_at", "KD", "qk_row", "KP", "0")
        score_at = "sm[t * LDP + s]"
    return Source(
        "chunk_outputs_from_scores" if from_scores else "chunk_outputs",
        inputs=("q", "k", *(("scores",) if from_scores else ()), "v", "vs", "g", "before"),
        outputs=("y",),
        body="""
    // q, k [Z, C, CH, KD] (and their scores [Z, C, CH, CH] from chunk_scores);
    // v, y [Z, R, C, CH, VD] or time first; vs, g [Z, R, C, CH]; before [Z, R, C, KD, VD];
    // the values' rows vs * v (v in any float dtype); y in T, the rest float32;
    // threadgroups of 128 threads (chassis.THREADS_PER_GROUP)
    constexpr int KP = 16;                        // channels a piece of the scores
    constexpr int LDS = KP + 4;                   // their row stride
    constexpr int LDP = CH + 4;                   // P's
    constexpr int LDA = 20;                       // a 16-channel piece of q * cum's
    constexpr int LDV = VD + 8;                   // 16 rows of v or S
    constexpr int QP = CH * LDP;                  // where the piece of q * cum starts
    constexpr int BP = QP + CH * LDA;             // and the rows of v or S
    constexpr int SIZE = BP + 16 * LDV > 2 * CH * LDS ? BP + 16 * LDV : 2 * CH * LDS;
    constexpr int VN = VD / 8;                    // a thread's share of 16 rows of v or S
    SHARED float sm[SIZE];
    SHARED float cum[CH];

""" + _chunk_threads("before") + "    const int s_at = chunk * KD * VD;\n" + scores + """
    float vn[VN];
    for (int e = 0; e < VN; ++e) {
        const int i = tid + e * 128;
        vn[e] = v[v_at + (i / VD) * v_row + i % VD];
    }
""" + ("" if from_scores else """    BARRIER();  // P overwrites the last piece
    if (rows) {
        for (int j = 0; j < CH / 8; ++j) {
            if (j < 2 * warp + 2) recurops_tile_store(score[j], sm, warp * 16 * LDP + j * 8, LDP);
        }
    }
    BARRIER();
""") + """
    // times the decays D[t, s] = prod_{s<r<=t} g[r] and the rows' scales vs[s], a
    // thread a column; zero above
    if (tid < CH) {
        const int s = tid;
        float p = vs[g_at + s];
        for (int t = 0; t < CH; ++t) {
            if (t > s) p *= g[g_at + t];
            sm[t * LDP + s] = (t >= s) ? """ + score_at + """ * p : 0.0f;
        }
    } else if (tid == 127) {
        float p = 1.0f;
        for (int t = 0; t < CH; ++t) {
            p *= g[g_at + t];
            cum[t] = p;
        }
    }

    // y = P v + (cum * q) S on the same accumulators
    recurops_tile out[VD / 8];
    for (int j = 0; j < VD / 8; ++j) recurops_tile_zero(out[j]);
""" + _values_then_states("v", "q", "cum", "before", "QP", "BP", transposed=False) + """
    // out to y in y's dtype T
    constexpr int LDY = VD + 4;
""" + _rows_out("""
        for (int i = tid; i < 16 * VD; i += 128) {
            y[v_at + (piece * 16 + i / VD) * v_row + i % VD] =
                static_cast<T>(sm[(i / VD) * LDY + i % VD]);
        }"""),
    )


CHUNK_OUTPUTS = _chunk_outputs(from_scores=False)
CHUNK_OUTPUTS_FROM_SCORES = _chunk_outputs(from_scores=True)


# The backward within a chunk, a threadgroup of four warps a chunk and head on
# the matrix tiles: the scores q k^T and dy v^T (each in the accumulators, the
# first then kept in threadgroup memory), the scores' gradient dy v^T * D
# (added up over the heads that share q and k), the gates' gradient from the
# decays' dy v^T * q k^T (taken to the gates in threadgroup memory, never
# written out), and dv = P^T dy + (w * k) dend. Threadgroup memory (at most
# 8192 floats, Metal's 32 KB): [CH][CH+4] for q k^T, then P, then pieces of
# w * k; after it one array used in turn for the pieces of the scores, 32
# rows of dy v^T at a time (then of the decays' gradient), and 16 rows of dy
# or of dend; and the chunk's gates, cum's gradient and w. With from_scores
# q k^T comes from chunk_scores.
def _chunk_scores_grad(from_scores: bool) -> Source:
    if from_scores:
        scores = """    for (int i = tid; i < CH * CH; i += 128) {
        const int t = i / CH;
        const int s = i % CH;
        if (s <= t) sm[t * LDP + s] = scores[group_at + i];
    }
    recurops_tile score[CH / 8];
"""
    else:
        scores = "    recurops_tile score[CH / 8];\n" + _scores(
            "q", "k", "qk_at", "KD", "qk_row", "KP", "DS", split=True) + """
    if (rows) {
        for (int j = 0; j < CH / 8; ++j) {
            if (j < 2 * warp + 2) recurops_tile_store(score[j], sm, warp * 16 * LDP + j * 8, LDP);
        }
    }
    BARRIER();  // the products are done with the last piece
"""
    return Source(
        "chunk_scores_grad_from_scores" if from_scores else "chunk_scores_grad",
        inputs=("q", "k", *(("scores",) if from_scores else ()), "v", "vs", "dy", "g", "dend",
                "dw", "dcum", "da"),
        outputs=("dv", "dvs", "dscores", "dg"),
        body="""
    // q, k [Z, C, CH, KD] (and their scores [Z, C, CH, CH] from chunk_scores);
    // v, dy, dv [Z, R, C, CH, VD] or time first;
    // vs, g, dw, dcum, dg, dvs [Z, R, C, CH];
    // dend [Z, R, C, KD, VD]; da [Z, R, C]; dscores [Z, C, CH, CH]; the values' rows
    // vs * v (v in any float dtype, dv in T); threadgroups of 128 threads
    constexpr int KP = 16;                         // channels a piece of q k^T
    constexpr int VP = (VD % 16 == 0) ? 16 : 8;    // and of dy v^T
    constexpr int LDS = 20;                        // the pieces' row stride
    constexpr int LDP = CH + 4;                    // q k^T's, P's and dy v^T's
    constexpr int LDV = VD + 8;                    // 16 rows of dy
    constexpr int BAND = 32 * LDP > 16 * LDV ? 32 * LDP : 16 * LDV;
    constexpr int REST = BAND > 2 * CH * LDS ? BAND : 2 * CH * LDS;
    constexpr int DS = CH * LDP;                   // where that array starts
    constexpr int VN = VD / 8;  // a thread's share of 16 rows of dy
    SHARED float sm[CH * LDP + REST];
    SHARED float gates[CH];
    SHARED float dcums[CH];  // dcum + e_{CH-1} da
    SHARED float ws[CH];     // w = D[CH-1, :]

""" + _chunk_threads("dend") + "    const int s_at = chunk * KD * VD;\n" + _GROUP_AT + """
    if (tid < CH) {
        gates[tid] = g[g_at + tid];
        dcums[tid] = dcum[g_at + tid] + (tid == CH - 1 ? da[chunk] : 0.0f);
    }
""" + scores + _scores("dy", "v", "v_at", "VD", "v_row", "VP", "DS",
                         split=True) + """
    // 32 rows t of dy v^T at a time. First a thread a column s, with D[t, s] =
    // prod_{s<r<=t} g[r] as a running product: dscores = dy v^T * D, P = q k^T * D,
    // and the decays' gradient dD = dy v^T * q k^T (its last row plus dw, that of
    // w = D[CH-1, :]) in place of dy v^T. Then a thread a row t, in place again:
    //   F_t[r] = sum_{s<r} dD[t, s] D[r-1, s] = g[r-1] F_t[r-1] + dD[t, r-1].
    // Then a thread a column r, the gates' gradient by products only:
    //   dg[r] = sum_{t>=r} D[t, r] (F_t[r] + cum[r-1] dcum'[t]),  cum[-1] = 1.
    float p = 1.0f;       // D[t, s], first pass
    float column = 1.0f;  // D[t, r], last pass
    float via_rows = 0.0f;
    float via_cum = 0.0f;
    for (int band = 0; band < CH; band += 32) {
        BARRIER();  // the products (or the last band) are done with the array
        if (rows && warp * 16 >= band && warp * 16 < band + 32) {
            for (int j = 0; j < CH / 8; ++j) {
                if (j < 2 * warp + 2) {
                    recurops_tile_store(score[j], sm, DS + (warp * 16 - band) * LDP + j * 8, LDP);
                }
            }
        }
        BARRIER();
        if (tid < CH) {
            const int s = tid;
            const float vs_s = vs[g_at + s];
            for (int t = band; t < band + 32 && t < CH; ++t) {
                if (t > s) p *= gates[t];
                const bool on = t >= s;  // the tiles on or below the diagonal hold these
                const float dyv = sm[DS + (t - band) * LDP + s] * vs_s;  // dy (vs * v)^T
                const float qk = sm[t * LDP + s];
                if (R == 1) {
                    dscores[group_at + t * CH + s] = on ? dyv * p : 0.0f;
                } else if (on) {  // summed over the heads that share q and k; zeros above
                    ATOMIC_ADD(&dscores[group_at + t * CH + s], dyv * p);
                }
                sm[DS + (t - band) * LDP + s] =
                    (on ? dyv * qk : 0.0f) + (t == CH - 1 ? dw[g_at + s] : 0.0f);
                sm[t * LDP + s] = on ? qk * p : 0.0f;
            }
        }
        BARRIER();
        if (tid < 32 && band + tid < CH) {
            const int row = DS + tid * LDP;
            float f = 0.0f;
            for (int r = 0; r < CH; ++r) {
                const float d = sm[row + r];
                sm[row + r] = f;
                f = gates[r] * f + d;
            }
        }
        BARRIER();
        if (tid < CH) {
            const int r = tid;
            for (int t = band; t < band + 32 && t < CH; ++t) {
                if (t > r) column *= gates[t];
                if (t >= r) {
                    via_rows += column * sm[DS + (t - band) * LDP + r];
                    via_cum += column * dcums[t];
                }
            }
        }
    }
    if (tid < CH) {
        float cum_before = 1.0f;  // cum[r-1]
        for (int i = 0; i < tid; ++i) cum_before *= gates[i];
        dg[g_at + tid] = via_rows + cum_before * via_cum;
    }

    if (tid < CH) ws[tid] = p;  // D[CH-1, s]

    // dv = P^T dy + (w * k) dend on the same accumulators, w * k where P was
    constexpr int LDA = 20;
    recurops_tile out[VD / 8];
    for (int j = 0; j < VD / 8; ++j) recurops_tile_zero(out[j]);
    float vn[VN];
    for (int e = 0; e < VN; ++e) {
        const int i = tid + e * 128;
        vn[e] = dy[v_at + (i / VD) * v_row + i % VD];
    }
""" + _values_then_states("dy", "k", "ws", "dend", "0", "DS", transposed=True) + """
    // the rows' gradient: dv = vs * out in T, dvs = sum out * v, eight lanes a row
    constexpr int LDY = VD + 4;
""" + _rows_out("""
        const int t = piece * 16 + tid / 8;
        const float scale = vs[g_at + t];
        float sum = 0.0f;
        for (int j = tid % 8; j < VD; j += 8) {
            const float d = sm[(tid / 8) * LDY + j];
            sum += d * static_cast<float>(v[v_at + t * v_row + j]);
            dv[v_at + t * v_row + j] = static_cast<T>(scale * d);
        }
        sum = LANE_SUM(sum, 1, 4);
        if (tid % 8 == 0) dvs[g_at + t] = sum;"""),
    )


CHUNK_SCORES_GRAD = _chunk_scores_grad(from_scores=False)
CHUNK_SCORES_GRAD_FROM_SCORES = _chunk_scores_grad(from_scores=True)

# The gradient of q (or of k) of a chunk (z, c), a threadgroup of four warps on
# the matrix tiles: out = sum_r (x_r * scale_r) S_r^T, summed over the heads
# that share q and k, plus P rows with P the scores' gradient dqk (its
# transpose with TRANS), warp w holding rows 16w..16w+15 of out in its
# accumulators. It walks the heads' value channels in pieces of VP, then the
# chunk's steps in pieces of VP, each piece (x scaled as it is loaded, S;
# then P, rows) staged in threadgroup memory while the next one loads; out
# leaves 16 rows at a time through threadgroup memory, in T.
SUMMED_STATE_PRODUCTS = Source(
    "summed_state_products",
    inputs=("x", "scale", "states", "dqk", "rows"),
    outputs=("out",),
    body="""
    // x [Z, R, C, CH, VD] or time first; scale [Z, R, C, CH]; states [Z, R, C, KD, VD];
    // dqk [Z, C, CH, CH]; rows and out [Z, C, CH, KD] or time first (out in T);
    // threadgroups of 128 threads (chassis.THREADS_PER_GROUP)
    constexpr int VP = (VD % 16 == 0) ? 16 : 8;  // channels (then steps) a piece
    constexpr int LDS = VP + 4;                  // the pieces' row stride
    constexpr int XN = CH * VP / 128;            // a thread's share of a piece of x or P
    constexpr int SN = KD * VP / 128;            // and of the states or rows
    constexpr int SPLIT = VD / VP;               // pieces a head
    constexpr int LDO = KD + 4;                  // 16 rows of out
    constexpr int STAGE = (CH + KD) * LDS;
    SHARED float sm[STAGE > 16 * LDO ? STAGE : 16 * LDO];

    const int Z = states_shape[0];
    const int R = states_shape[1];
    const int C = states_shape[2];
""" + _value_layout("x") + _row_layout("rows") + """    const int tid = THREAD_ID % 128;
    const int chunk = THREAD_ID / 128;  // z * C + c
    if (chunk >= Z * C) return;  // a whole threadgroup: no barrier is left half-met
    const int warp = tid / 32;
    const bool rows_here = warp < CH / 16;  // this warp owns rows (uniform in the warp)
    const int z = chunk / C;
    const int c = chunk % C;
    const int qk_at = """ + _row_at("z", "c") + """;
    const int HEAD_PIECES = R * SPLIT;

    recurops_tile out_rows[KD / 8];
    for (int j = 0; j < KD / 8; ++j) recurops_tile_zero(out_rows[j]);
    float xn[XN];
    float sn[SN];
    for (int p = 0; p < HEAD_PIECES + CH / VP + 1; ++p) {
        if (p > 0) {  // stage the piece loaded last time round, and multiply it
            BARRIER();  // the products are done with the last piece
            const bool steps = p - 1 >= HEAD_PIECES;  // a piece of P and rows
            for (int e = 0; e < XN; ++e) {
                const int i = tid + e * 128;  // P^T's pieces come in as rows s
                if (steps && TRANS) sm[(i % CH) * LDS + i / CH] = xn[e];
                else sm[(i / VP) * LDS + i % VP] = xn[e];
            }
            for (int e = 0; e < SN; ++e) {
                const int i = tid + e * 128;  // rows come in as rows s
                if (steps) sm[(CH + i % KD) * LDS + i / KD] = sn[e];
                else sm[(CH + i / VP) * LDS + i % VP] = sn[e];
            }
            BARRIER();
        }
        if (p < HEAD_PIECES) {  // load piece p: head p / SPLIT, channels from v0
            const int at = (z * R + p / SPLIT) * C + c;  // the head's chunk
            const int v0 = (p % SPLIT) * VP;
            const int x_at = """ + _value_at("z * R + p / SPLIT", "c") + """ + v0;
            for (int e = 0; e < XN; ++e) {
                const int i = tid + e * 128;
                xn[e] = static_cast<float>(x[x_at + (i / VP) * v_row + i % VP]) *
                        scale[at * CH + i / VP];
            }
            for (int e = 0; e < SN; ++e) {
                const int i = tid + e * 128;
                sn[e] = states[(at * KD + i / VP) * VD + v0 + i % VP];
            }
        } else if (p < HEAD_PIECES + CH / VP) {  // steps s0.. of P and of rows
            const int s0 = (p - HEAD_PIECES) * VP;
            for (int e = 0; e < XN; ++e) {
                const int i = tid + e * 128;
                xn[e] = TRANS ? dqk[(chunk * CH + s0 + i / CH) * CH + i % CH]
                              : dqk[(chunk * CH + i / VP) * CH + s0 + i % VP];
            }
            for (int e = 0; e < SN; ++e) {
                const int i = tid + e * 128;
                sn[e] = static_cast<float>(rows[qk_at + (s0 + i / KD) * qk_row + i % KD]);
            }
        }
        if (p > 0 && rows_here) {
            for (int ks = 0; ks < VP; ks += 8) {
                recurops_tile_a fa;
                recurops_load_a(fa, sm + warp * 16 * LDS + ks, LDS);
                for (int j = 0; j < KD / 8; ++j) {
                    recurops_tile_mma(out_rows[j], fa, sm + (CH + j * 8) * LDS + ks, LDS, true);
                }
            }
        }
    }
    for (int piece = 0; piece < CH / 16; ++piece) {
        BARRIER();  // the products (or the last piece's reads) are done with the array
        if (warp == piece) {
            for (int j = 0; j < KD / 8; ++j) recurops_tile_store(out_rows[j], sm, j * 8, LDO);
        }
        BARRIER();
        for (int i = tid; i < 16 * KD; i += 128) {
            out[qk_at + (piece * 16 + i / KD) * qk_row + i % KD] =
                static_cast<T>(sm[(i / KD) * LDO + i % KD]);
        }
    }
""",
)

# Row sums of a chunk's rows with its products with the chunk's state (or
# state cotangent), a threadgroup of four warps a chunk and head on the matrix
# tiles: sums[t] = sum_j v[t, j] (q S)[t, j], q S in the accumulators (warp w
# rows 16w..16w+15, over pieces of 16 channels of q and rows of S), then 16
# rows at a time through threadgroup memory, eight lanes a row.
CHUNK_STATE_ROW_SUMS = Source(
    "chunk_state_row_sums",
    inputs=("q", "v", "states"),
    outputs=("sums",),
    body="""
    // q [Z, C, CH, KD] (shared by the R heads of a group); v [Z, R, C, CH, VD] or time first;
    // states [Z, R, C, KD, VD]; sums [Z, R, C, CH]; threadgroups of 128 threads
    constexpr int LDA = 20;       // a 16-channel piece of q's row stride
    constexpr int LDV = VD + 8;   // 16 rows of S
    constexpr int LDY = VD + 4;   // 16 rows of q S
    constexpr int VN = VD / 8;    // a thread's share of 16 rows of S
    constexpr int STAGE = CH * LDA + 16 * LDV;
    SHARED float sm[STAGE > 16 * LDY ? STAGE : 16 * LDY];

""" + _chunk_threads("states") + """    const int s_at = chunk * KD * VD;
    recurops_tile out[VD / 8];
    for (int j = 0; j < VD / 8; ++j) recurops_tile_zero(out[j]);
    float vn[VN];
""" + _values_then_states(None, "q", None, "states", "0", "CH * LDA") + _rows_out("""
        const int t = piece * 16 + tid / 8;  // eight lanes a row
        float sum = 0.0f;
        for (int j = tid % 8; j < VD; j += 8) {
            sum += sm[(tid / 8) * LDY + j] * static_cast<float>(v[v_at + t * v_row + j]);
        }
        sum = LANE_SUM(sum, 1, 4);
        if (tid % 8 == 0) sums[chunk * CH + t] = sum;"""),
)

# One head's state (or its cotangent) carried through the chunks on the matrix
# tiles, forwards (chunk_states) or backwards (chunk_cotangents): a threadgroup
# holds a BK x BV block of it in its accumulators, warp w rows 16w..16w+15,
# and per chunk writes it out, scales it by the chunk's gate product and adds
# A^T (weight * B) over the chunk's steps, in pieces of SP steps, loading the
# next piece while it multiplies this one. The @...@ hooks are each
# direction's own: the chunk order, the step weights and what follows the write.
_CARRY = """
    // @A@ [Z, C, CH, KD] (shared by the R heads of a group); @B@ [Z, R, C, CH, VD] or time first;
    // g [Z, R, C, CH]; the first and last state [Z, R, KD, VD]; @OUT@ [Z, R, C, KD, VD];
    // threadgroups of 128 threads (chassis.THREADS_PER_GROUP)
    constexpr int SP = (CH % 32 == 0) ? 32 : 16;  // steps a piece
    constexpr int PIECES = CH / SP;
    constexpr int LDA = BK + 8;
    constexpr int LDB = BV + 8;
    constexpr int AN = SP * BK / 128;  // a thread's share of a piece of @A@
    constexpr int BN = SP * BV / 128;  // and of @B@
    SHARED float as[SP * LDA];
    SHARED float bs[SP * LDB];
    SHARED float gs[CH];
    SHARED float ws[CH + 1];  // the steps' weights, and the chunk's gate product last
@DECLARE@
    const int Z = g_shape[0];
    const int R = g_shape[1];
    const int C = g_shape[2];
""" + _value_layout("@B@") + _row_layout("@A@") + """    const int KB = KD / BK;
    const int VB = VD / BV;
    const int tid = THREAD_ID % 128;
    const int block = THREAD_ID / 128;
    if (block >= Z * R * KB * VB) return;  // a whole threadgroup
    const int warp = tid / 32;
    const bool rows = warp < BK / 16;  // this warp holds state rows (uniform in the warp)
    const int vb = block % VB;
    const int kb = (block / VB) % KB;
    const int zr = block / (VB * KB);
    const int a_at = """ + _row_at("zr / R", "0") + """ + kb * BK;
    const int b_at = """ + _value_at("zr", "0") + """ + vb * BV;
    const int g_at = zr * C * CH;
    const int row = kb * BK + warp * 16;  // the warp's first state row

    recurops_tile h[BV / 8];
    if (rows) {
        for (int j = 0; j < BV / 8; ++j) {
@START@
        }
    }
    float an[AN];
    float bn[BN];
    const int first = (@CHUNK@(0)) * CH;
    for (int e = 0; e < AN; ++e) {
        const int i = tid + e * 128;
        an[e] = @A@[a_at + (first + i / BK) * qk_row + i % BK];
    }
    for (int e = 0; e < BN; ++e) {
        const int i = tid + e * 128;
        bn[e] = @B@[b_at + (first + i / BV) * v_row + i % BV];
    }
    float gn = (tid < CH) ? g[g_at + first + tid] : 0.0f;

    for (int n = 0; n < C; ++n) {
        const int c = @CHUNK@(n);
        BARRIER();  // the last chunk is done with gs, ws and the pieces
        if (tid < CH) gs[tid] = gn;
        if (rows) {
            for (int j = 0; j < BV / 8; ++j) {
                const int at = ((zr * C + c) * KD + row) * VD + vb * BV + j * 8;
                recurops_tile_store(h[j], @OUT@, at, VD);
@WRITTEN@
            }
        }
        BARRIER();
@AFTER_WRITE@
        if (tid < CH) {
@WEIGHT@
            if (n + 1 < C) gn = g[g_at + (@CHUNK@(n + 1)) * CH + tid];
        } else if (tid == 127) {
            float p = 1.0f;
            for (int r = 0; r < CH; ++r) p *= gs[r];
            ws[CH] = p;
        }
        BARRIER();
        if (rows) {
            for (int j = 0; j < BV / 8; ++j) recurops_tile_scale(h[j], ws[CH]);
        }
        for (int p = 0; p < PIECES; ++p) {
            for (int e = 0; e < AN; ++e) {
                const int i = tid + e * 128;
                as[(i / BK) * LDA + i % BK] = an[e];
            }
            for (int e = 0; e < BN; ++e) {
                const int i = tid + e * 128;
                bs[(i / BV) * LDB + i % BV] = bn[e] * ws[p * SP + i / BV];
            }
            BARRIER();
            // the next piece: this chunk's next one, or the next chunk's first
            const int next = n * PIECES + p + 1;
            if (next < C * PIECES) {
                const int step = (@CHUNK@(next / PIECES)) * CH + (next % PIECES) * SP;
                for (int e = 0; e < AN; ++e) {
                    const int i = tid + e * 128;
                    an[e] = @A@[a_at + (step + i / BK) * qk_row + i % BK];
                }
                for (int e = 0; e < BN; ++e) {
                    const int i = tid + e * 128;
                    bn[e] = @B@[b_at + (step + i / BV) * v_row + i % BV];
                }
            }
            if (rows) {
                for (int kk = 0; kk < SP; kk += 8) {
                    recurops_tile_a fa;
                    recurops_load_a_t(fa, as + kk * LDA + warp * 16, LDA);
                    for (int j = 0; j < BV / 8; ++j) {
                        recurops_tile_mma(h[j], fa, bs + kk * LDB + j * 8, LDB, false);
                    }
                }
            }
            if (p + 1 < PIECES) BARRIER();  // the products are done with this piece
        }
    }
@LAST@"""


def _carry(name, inputs, outputs, hooks: dict, start: str | None, last: str | None) -> Source:
    """``_CARRY`` with its hooks, starting from the state ``start`` (an
    input; zeros if None) and writing the last one to ``last`` (an output;
    nowhere if None)."""
    hooks = {**hooks, "START": f"""
            recurops_tile_load(h[j], {start}, (zr * KD + row) * VD + vb * BV + j * 8, VD);"""
             if start else "            recurops_tile_zero(h[j]);",
             "LAST": f"""    if (rows) {{
        for (int j = 0; j < BV / 8; ++j) {{
            recurops_tile_store(h[j], {last}, (zr * KD + row) * VD + vb * BV + j * 8, VD);
        }}
    }}
""" if last else ""}
    body = _CARRY
    for hook, text in hooks.items():
        body = body.replace(f"@{hook}@", text)
    assert "@" not in body, body
    return Source(name, inputs=inputs, outputs=outputs, body=body)


# The states entering each chunk: S[c+1] = a[c] S[c] + k^T (w * vs * v), w[s] =
# prod_{s<r<CH} g[r], from S[0] = h0 (zeros with initial=False).
def _chunk_states(initial: bool) -> Source:
    return _carry(
        "chunk_tile_states" if initial else "chunk_tile_states_from_zeros",
        ("k", "v", "vs", "g", *(("h0",) if initial else ())), ("before", "final"),
        {"A": "k", "B": "v", "OUT": "before",
         "CHUNK": "", "DECLARE": "", "WRITTEN": "", "AFTER_WRITE": "",
         "WEIGHT": """
            float p = vs[g_at + c * CH + tid];  // the row's scale, then w
            for (int r = CH - 1; r > tid; --r) p *= gs[r];
            ws[tid] = p;"""},
        start="h0" if initial else None, last="final")


CHUNK_STATES = _chunk_states(initial=True)
CHUNK_STATES_FROM_ZEROS = _chunk_states(initial=False)

# Their cotangents, newest chunk first: Y[c] = a[c] Y[c+1] + q^T (cum * dy)
# from Y[C] = dfinal, cum[t] = prod_{r<=t} g[r]; after[c] = Y[c+1], and the
# gradient of a[c], sum Y[c+1] * before[c], in parts (a warp's rows of a
# threadgroup's block); dh0 = Y[0] (not written with initial=False).
def _chunk_cotangents(initial: bool) -> Source:
    return _carry(
        "chunk_tile_cotangents" if initial else "chunk_tile_cotangents_to_zeros",
        ("q", "dy", "g", "dfinal", "before"), ("after", *(("dh0",) if initial else ()), "parts"),
        {"A": "q", "B": "dy", "OUT": "after",
         "CHUNK": "(C - 1) - ",
         "DECLARE": """
    float part = 0.0f;  // the lane's share of the chunk's sum for the gradient of a""",
         "WRITTEN": """
                recurops_tile s;  // the same block of the state before the chunk
                recurops_tile_load(s, before, at, VD);
                part += recurops_tile_dot(h[j], s);""",
         "AFTER_WRITE": """
        part = WARP_SUM(part);
        if (LANE_ID == 0) parts[((zr * C + c) * KB * VB + kb * VB + vb) * 4 + warp] = part;
        part = 0.0f;""",
         "WEIGHT": """
            float p = 1.0f;
            for (int r = 0; r <= tid; ++r) p *= gs[r];
            ws[tid] = p;"""},
        start="dfinal", last="dh0" if initial else None)


CHUNK_COTANGENTS = _chunk_cotangents(initial=True)
CHUNK_COTANGENTS_TO_ZEROS = _chunk_cotangents(initial=False)


# Shapes the kernels on matrix tiles (chunk_states, chunk_cotangents,
# chunk_outputs) take: chunks of 16 to 64 steps in whole tiles, key channels
# in pieces of 16, value channels in tiles of 8 up to what chunk_outputs'
# accumulators and threadgroup memory hold.
TILED_STEPS = (16, 32, 48, 64)
TILED_MAX_V = 128


def tiles_take(steps: int, dk: int, dv: int) -> bool:
    """Whether the kernels on matrix tiles take chunks of ``steps`` with these head dims."""
    return steps in TILED_STEPS and dk % 16 == 0 and dv % 8 == 0 and 0 < dv <= TILED_MAX_V


def takes(*arrays, extent: int = 0) -> bool:
    """Whether these kernels take the arrays: float32, not empty, and every
    index a kernel forms (into the arrays, or up to ``extent``: its largest
    output or thread count) within 32 bits."""
    return extent < 2**31 and all(x.dtype == mx.float32 and 0 < x.size < 2**31 for x in arrays)


def _rows(a: mx.array, b: mx.array) -> int:
    """``R``: how many of ``b``'s state elements have their own ``a``
    (``a [Z, C, *sa]`` broadcasting against ``b [Z, C, *sb]`` along its
    trailing axes)."""
    shared = len(a.shape) - 2
    while shared > 0 and a.shape[1 + shared] == 1:
        shared -= 1
    assert a.shape[2:2 + shared] == b.shape[2:2 + shared], (a.shape, b.shape)
    return math.prod(a.shape[2:2 + shared])


def pass_states(a: mx.array, b: mx.array, h0: mx.array) -> tuple[mx.array, mx.array]:
    """``h[c] = a[c] * h[c-1] + b[c]`` along axis 1 from ``h[-1] = h0``.

    ``a [Z, C, *sa]`` broadcasts against ``b [Z, C, *sb]`` (it varies along
    leading state axes only), ``h0 [Z, *sb]``. Returns the state before each
    chunk ``[h0, h[0], ..., h[C-2]]`` and the last ``h[C-1]``.
    """
    z, c = b.shape[:2]
    size = math.prod(b.shape[2:])
    before, final = launch(
        PASS_STATES,
        (a.reshape(z, c, _rows(a, b)), b.reshape(z, c, size), h0.reshape(z, size)),
        {"before": ((z, c, size), mx.float32), "final": ((z, size), mx.float32)},
        threads=lanes(z * size), template={},
    )
    return before.reshape(b.shape), final.reshape(h0.shape)


def pass_cotangents(a: mx.array, g: mx.array, dfinal: mx.array, before: mx.array):
    """The reverse of ``pass_states``: ``Y[c] = a[c] Y[c+1] + g[c]``, ``Y[C] = dfinal``.

    ``g`` holds the cotangents of the states before each chunk (from the
    outputs), ``before`` those states. Returns ``Y[1..C]`` (the cotangent of
    the state after each chunk), ``Y[0]`` (that of ``h0``) and the gradient
    of ``a``, ``da[c] = sum Y[c+1] * before[c]`` over the elements sharing
    ``a[c]`` (``a``'s shape), from the kernel's sums over warps (or elements).
    """
    z, c = g.shape[:2]
    size = math.prod(g.shape[2:])
    rows = _rows(a, g)
    part = WARP if (size // rows) % WARP == 0 else 1
    after, dh0, parts = launch(
        PASS_COTANGENTS,
        (a.reshape(z, c, rows), g.reshape(z, c, size), dfinal.reshape(z, size),
         before.reshape(z, c, size)),
        {"after": ((z, c, size), mx.float32), "dh0": ((z, size), mx.float32),
         "parts": ((z, c, size // part), mx.float32)},
        threads=lanes(z * size), template={"PART": part},
    )
    da = parts.reshape(z, c, rows, -1).sum(-1)
    return after.reshape(g.shape), dh0.reshape(dfinal.shape), da.reshape(a.shape)


def row_dots(x: mx.array, y: mx.array) -> mx.array:
    """``(x * y).sum(-1)`` in one pass, one warp a row (``x``, ``y`` of one shape)."""
    n = x.shape[-1]
    rows = x.size // n
    (dots,) = launch(ROW_DOTS, (x.reshape(rows, n), y.reshape(rows, n)),
                     {"dots": ((rows,), mx.float32)}, threads=rows * WARP, template={})
    return dots.reshape(x.shape[:-1])


def scaled_sum(x: mx.array, s: mx.array, y: mx.array) -> mx.array:
    """``x * s[..., None] + y`` in one pass (``x``, ``y`` of one shape)."""
    n = x.shape[-1]
    rows = x.size // n
    (out,) = launch(SCALED_SUM, (x.reshape(rows, n), s.reshape(rows), y.reshape(rows, n)),
                    {"out": ((rows, n), mx.float32)}, threads=lanes(x.size), template={})
    return out.reshape(x.shape)


def decays(g: mx.array) -> mx.array:
    """``g [..., T]`` -> ``D [..., T(t), T(s)]``, ``D[t, s] = prod_{s<r<=t} g[r]``
    for ``t >= s`` (1 on the diagonal), 0 above it."""
    steps = g.shape[-1]
    rows = math.prod(g.shape[:-1])
    (decay,) = launch(DECAYS, (g.reshape(rows, steps),),
                      {"decay": ((rows, steps, steps), mx.float32)},
                      threads=lanes(rows * steps), template={})
    return decay.reshape(*g.shape, steps)


def gate_grad(g, full, dw, dcum, da, cum) -> mx.array:
    """The gates' gradient ``dg [..., T]`` from the gates ``g``, ``full = dD @
    D^T`` (``[..., T, T]``, ``D`` the decays of ``g``), the gradients of
    ``w = D[T-1, :]`` (``dw``), of ``cum`` (``dcum``, ``[..., T]``) and of
    ``a = cum[T-1]`` (``da [...]``); the formula is
    ``scalar_chunked._gate_grad``'s, with ``D`` rebuilt from ``g``."""
    steps = g.shape[-1]
    rows = math.prod(g.shape[:-1])
    g, dw, dcum, cum = (x.reshape(rows, steps) for x in (g, dw, dcum, cum))
    inputs = (g, full.reshape(rows, steps, steps), dw, dcum, da.reshape(rows), cum)
    (dg,) = launch(GATE_GRAD, inputs, {"dg": ((rows, steps), mx.float32)},
                   threads=lanes(rows * steps), template={})
    return dg.reshape(da.shape + (steps,))


def channel_scores(q: mx.array, k: mx.array, g: mx.array):
    """``q, k, g [..., T, K]`` -> the within-chunk scores ``A [..., T, T]``,
    ``A[t, s] = sum_k q[t,k] k[s,k] prod_{s<r<=t} g[r,k]`` (0 for ``s > t``),
    and the chunk's products ``q * cum``, ``k * w`` (channel-major,
    ``[..., K, T]``) and ``a = cum[T-1]`` (``[..., K]``), where ``cum[t] =
    prod_{r<=t} g[r]`` and ``w[s] = prod_{s<r<T} g[r]``."""
    *lead, steps, dk = q.shape
    rows = math.prod(lead)
    q, k, g = (mx.contiguous(mx.swapaxes(x.reshape(rows, steps, dk), 1, 2)) for x in (q, k, g))
    channel_major = ((rows, dk, steps), mx.float32)
    scores, qc, kw, a = launch(
        CHANNEL_SCORES, (q, k, g),
        {"scores": ((rows, steps, steps), mx.float32), "qc": channel_major,
         "kw": channel_major, "a": ((rows, dk), mx.float32)},
        threads=lanes(rows * steps), template={"STEPS": steps})
    return (scores.reshape(*lead, steps, steps), qc.reshape(*lead, dk, steps),
            kw.reshape(*lead, dk, steps), a.reshape(*lead, dk))


def channel_scores_grad(q, k, g, dscores, dqc, dkw, da) -> tuple[mx.array, mx.array, mx.array]:
    """The backward of ``channel_scores``: ``(dq, dk, dg)`` (``[..., T, K]``)
    from the gradients of the scores (``dscores [..., T, T]``), of ``q * cum``
    and ``k * w`` (``dqc``, ``dkw``, ``[..., T, K]``) and of ``a`` (``da [..., K]``)."""
    *lead, steps, dk = q.shape
    rows = math.prod(lead)
    flat = tuple(x.reshape(rows, steps, dk) for x in (q, k, g))
    grads = launch(CHANNEL_SCORES_GRAD,
                   (*flat, dscores.reshape(rows, steps, steps), dqc.reshape(rows, steps, dk),
                    dkw.reshape(rows, steps, dk), da.reshape(rows, dk)),
                   {name: ((rows, steps, dk), mx.float32) for name in ("dq", "dk", "dg")},
                   threads=lanes(rows * dk), template={"STEPS": steps})
    return tuple(x.reshape(q.shape) for x in grads)


def chunk_outputs(q, k, v, vs, g, before, dtype: mx.Dtype = mx.float32,
                  time_first: bool = False) -> mx.array:
    """The chunks' outputs ``y = (q k^T * D) (vs * v) + cum * (q S)`` on
    matrix tiles.

    ``q, k [Z, C, T, K]`` (any float dtype, shared by the ``R`` heads of a
    group), the values' rows ``v [Z, R, C, T, V]`` (any float dtype) scaled
    by ``vs [Z, R, C, T]``, gates ``g [Z, R, C, T]``, the states entering
    each chunk ``before [Z, R, C, K, V]``; ``D[t, s] = prod_{s<r<=t} g[r]``
    (0 above the diagonal) and ``cum[t] = prod_{r<=t} g[r]``. Returns ``y
    [Z, R, C, T, V]`` in ``dtype``, rounded once from float32 (the products
    in TF32 on CUDA, but for the scores of ``R > 1`` heads, which
    ``chunk_scores`` computes once a group, float32-accurate).
    ``time_first``: ``q`` and ``k`` laid out ``[B, C, T,
    G, K]`` (group ``b * G + g`` for ``Z = B G``), ``v`` and ``y`` ``[B, C,
    T, H, V]`` (head ``b * H + h`` for ``Z R = B H``), so that the caller's
    ``[B, L, G, K]`` and ``[B, L, H, V]`` need no copy. Shapes as
    ``tiles_take`` says.
    """
    config = _chunk_launch(q, g, v, time_first)
    config["template"]["T"] = dtype
    shared = _shared_scores(q, k, g, time_first)
    source = CHUNK_OUTPUTS_FROM_SCORES if shared else CHUNK_OUTPUTS
    (y,) = launch(source, (q, k, *shared, v, vs, g, before), {"y": (v.shape, dtype)}, **config)
    return y


def chunk_scores(q, k, time_first: bool = False) -> mx.array:
    """The scores ``q k^T`` of each chunk on matrix tiles, float32-accurate
    (split products on CUDA): ``q, k [Z, C, T, K]`` (any float dtype; time
    first ``[B, C, T, G, K]`` as ``chunk_outputs`` says) -> ``[Z, C, T, T]``
    float32, of which only the 16 x 16 tiles on or below the diagonal are
    written."""
    c, steps, dk = q.shape[1], q.shape[2], q.shape[-1]
    z = q.shape[0] * q.shape[3] if time_first else q.shape[0]
    assert steps in TILED_STEPS and dk % 16 == 0, (steps, dk)
    (scores,) = launch(CHUNK_SCORES, (q, k), {"scores": ((z, c, steps, steps), mx.float32)},
                       threads=z * c * THREADS_PER_GROUP,
                       template={"CH": steps, "KD": dk, "TF": int(time_first)})
    return scores


def _shared_scores(q, k, heads, time_first: bool) -> tuple:
    """What the tile kernels read besides ``q`` and ``k``: the scores from
    ``chunk_scores``, computed once, where ``R > 1`` heads share them
    (``heads [Z, R, ...]``); nothing where each head computes its own."""
    return (chunk_scores(q, k, time_first),) if heads.shape[1] > 1 else ()


def _tile_template(steps: int, dk: int, dv: int, time_first: bool) -> dict:
    """What the tile kernels bake: the chunk length and head dims (which
    ``tiles_take`` must admit) and the values' layout."""
    assert tiles_take(steps, dk, dv), (steps, dk, dv)
    return {"CH": steps, "KD": dk, "VD": dv, "TF": int(time_first)}


def _chunk_launch(q, heads, v, time_first: bool) -> dict:
    """A threadgroup a chunk and head, with the chunk length, head dims and
    values' layout baked (``q [Z, C, T, K]``, ``heads [Z, R, C, ...]``)."""
    z, r, c = heads.shape[:3]
    return {"threads": z * r * c * THREADS_PER_GROUP,
            "template": _tile_template(q.shape[2], q.shape[-1], v.shape[-1], time_first)}


def chunk_scores_grad(q, k, v, vs, dy, g, dend, dw, dcum, da, time_first: bool = False):
    """The backward within each chunk, ``y = P (vs * v)`` with ``P = q k^T *
    D``, with the states' part of the values' gradient and the gates'
    gradient, on matrix tiles.

    ``q, k [Z, C, T, K]`` (shared by the ``R`` heads of a group), the
    values' rows ``v [Z, R, C, T, V]`` (any float dtype) scaled by ``vs [Z,
    R, C, T]``, the outputs' gradient ``dy`` ``[Z, R, C, T, V]`` (any float
    dtype), gates ``g [Z, R, C, T]``; ``D[t, s] = prod_{s<r<=t} g[r]``,
    ``cum[t] = prod_{r<=t} g[r]``, ``w = D[T-1, :]``. From the rest of the
    backward: the cotangent of the state after each chunk ``dend [Z, R, C,
    K, V]``, and the gradients of ``w``, of ``cum`` (``dw``, ``dcum``, ``[Z,
    R, C, T]``) and of ``a = cum[T-1]`` (``da [Z, R, C]``). With ``u = P^T
    dy + (w * k) dend`` (the gradient of the rows ``vs * v``), returns the
    gradients of ``v``, ``vs * u`` in ``v``'s dtype, and of ``vs``, ``sum_j
    u * v``; the gradient of the scores ``q k^T``, ``dy (vs * v)^T * D`` for
    ``t >= s`` (zero above the diagonal) summed over the heads that share
    them (``[Z, C, T, T]``; atomic float adds where ``R > 1``, so their
    order, and the last bits, vary from run to run); and the
    gates' gradient ``dg [Z, R, C, T]`` (``scalar_chunked._gate_grad``'s
    formula with the decays' gradient ``dy (vs * v)^T * q k^T``, which is
    never written out). Float32 but ``v``'s gradient, the products for
    ``u`` in TF32 on CUDA. ``time_first``: ``q``, ``k``, ``v``, ``dy`` and
    ``v``'s gradient laid out as ``chunk_outputs`` says. Shapes as ``tiles_take``
    says.
    """
    config = _chunk_launch(q, g, v, time_first)
    config["template"]["T"] = v.dtype
    z, r, c, steps = g.shape
    shared = _shared_scores(q, k, g, time_first)
    source = CHUNK_SCORES_GRAD_FROM_SCORES if shared else CHUNK_SCORES_GRAD
    return launch(source, (q, k, *shared, v, vs, dy, g, dend, dw, dcum, da),
                  {"dv": (v.shape, v.dtype), "dvs": (g.shape, mx.float32),
                   "dscores": ((z, c, steps, steps), mx.float32),
                   "dg": (g.shape, mx.float32)},
                  init_value=0.0 if r > 1 else None, **config)


def summed_state_products(x, scale, states, dqk, rows, transposed: bool = False,
                          time_first: bool = False) -> mx.array:
    """The gradient of ``q`` (or of ``k``) from its two parts, on matrix
    tiles: ``sum_r (x_r * scale_r[..., None]) @ S_r^T``, the products of
    each head's chunk rows with its chunk's state (or state cotangent)
    summed over the ``R`` heads that share ``q`` and ``k``, plus ``dqk @
    rows`` (``dqk^T @ rows`` if ``transposed``), the scores' gradient times
    the other one of ``k`` and ``q``.

    ``x [Z, R, C, T, V]`` (any float dtype), ``scale [Z, R, C, T]``,
    ``states [Z, R, C, K, V]``, ``dqk [Z, C, T, T]`` (float32), ``rows [Z,
    C, T, K]`` (any float dtype); ``time_first``: ``x`` and ``rows`` laid
    out as ``chunk_outputs`` says. Returns the gradient in ``rows``' dtype
    and layout, rounded once from float32 (the products in TF32 on CUDA).
    Shapes as ``tiles_take`` says.
    """
    z, _, c, steps = scale.shape
    dk, dv = states.shape[-2:]
    template = {**_tile_template(steps, dk, dv, time_first), "TRANS": int(transposed),
                "T": rows.dtype}
    (out,) = launch(SUMMED_STATE_PRODUCTS, (x, scale, states, dqk, rows),
                    {"out": (rows.shape, rows.dtype)}, threads=z * c * THREADS_PER_GROUP,
                    template=template)
    return out


def chunk_state_row_sums(q, v, states, time_first: bool = False) -> mx.array:
    """``sum_j v[..., t, j] (q S)[t, j]``: the row sums of each head's chunk
    rows with the products of the chunk's rows of ``q`` and its state (or
    state cotangent) ``S``, on matrix tiles, without ``q S`` in memory.

    ``q [Z, C, T, K]`` (shared by the ``R`` heads of a group), ``v [Z, R, C,
    T, V]`` (any float dtype; ``time_first`` as ``chunk_outputs`` says),
    ``states [Z, R, C, K, V]``. Returns ``[Z, R, C, T]``, float32 (the
    products in TF32 on CUDA). Shapes as ``tiles_take`` says.
    """
    (sums,) = launch(CHUNK_STATE_ROW_SUMS, (q, v, states),
                     {"sums": (states.shape[:3] + q.shape[2:3], mx.float32)},
                     **_chunk_launch(q, states, v, time_first))
    return sums


def _block_width(n: int, widest: int) -> int:
    """``n`` up to ``widest``, else the widest of ``widest, widest / 2, ...`` dividing ``n``."""
    if n <= widest:
        return n
    width = widest
    while n % width:
        width //= 2
    return width


def chunk_states(k, v, vs, g, h0, time_first: bool = False) -> tuple[mx.array, mx.array]:
    """The states entering each chunk on matrix tiles: ``S[c+1] = a[c] S[c]
    + k^T (w * vs * v)`` from ``S[0] = h0``, where ``a = prod_r g[r]`` and
    ``w[s] = prod_{s<r<T} g[r]`` over the chunk's steps.

    ``k [Z, C, T, K]`` (shared by the ``R`` heads of a group), the values'
    rows ``v [Z, R, C, T, V]`` (any float dtype) scaled by ``vs [Z, R, C,
    T]``, ``g [Z, R, C, T]``, ``h0 [Z, R, K, V]`` (None: zeros, which are
    never in memory). Returns ``before [Z, R,
    C, K, V]`` (``S[0..C-1]``) and the final state ``S[C]``, float32 (the
    products in TF32 on CUDA). ``time_first``: ``k`` and ``v`` laid out as
    ``chunk_outputs`` says. Shapes as ``tiles_take`` says.
    """
    z, r, c, steps = g.shape
    dk, dv = k.shape[-1], v.shape[-1]
    source, start = (CHUNK_STATES, (h0,)) if h0 is not None else (CHUNK_STATES_FROM_ZEROS, ())
    return launch(source, (k, v, vs, g, *start),
                  {"before": ((z, r, c, dk, dv), mx.float32),
                   "final": ((z, r, dk, dv), mx.float32)},
                  **_carry_launch(z, r, steps, dk, dv, time_first))


def _carry_launch(z, r, steps, dk, dv, time_first: bool) -> dict:
    bk, bv = _block_width(dk, 64), _block_width(dv, 32)
    blocks = z * r * (dk // bk) * (dv // bv)
    return {"threads": blocks * THREADS_PER_GROUP,
            "template": {**_tile_template(steps, dk, dv, time_first), "BK": bk, "BV": bv}}


def chunk_cotangents(q, dy, g, dfinal, before, time_first: bool = False,
                     initial: bool = True) -> tuple[mx.array, mx.array | None, mx.array]:
    """The reverse of ``chunk_states`` on matrix tiles, from the outputs'
    gradient: ``Y[c] = a[c] Y[c+1] + q^T (cum * dy)`` from ``Y[C] = dfinal``,
    ``cum[t] = prod_{r<=t} g[r]`` over the chunk's steps.

    ``q [Z, C, T, K]`` (shared by the ``R`` heads of a group), ``dy [Z, R,
    C, T, V]`` (any float dtype; ``time_first`` as ``chunk_outputs`` says),
    ``g [Z, R, C, T]``, ``dfinal [Z, R, K, V]``, the states entering each
    chunk ``before [Z, R, C, K, V]``. Returns ``Y[1..C]`` (the cotangent of
    the state after each chunk), ``Y[0]`` (that of the initial state; None
    without one, ``initial=False``) and the gradient of ``a``, ``sum Y[c+1]
    * before[c]`` (``[Z, R, C]``), float32.
    """
    z, r, c, steps = g.shape
    dk, dv = q.shape[-1], dy.shape[-1]
    config = _carry_launch(z, r, steps, dk, dv, time_first)
    blocks = config["threads"] // THREADS_PER_GROUP // (z * r)
    outputs = {"after": (before.shape, mx.float32),
               **({"dh0": (dfinal.shape, mx.float32)} if initial else {}),
               "parts": ((z, r, c, blocks * THREADS_PER_GROUP // WARP), mx.float32)}
    after, *dh0, parts = launch(CHUNK_COTANGENTS if initial else CHUNK_COTANGENTS_TO_ZEROS,
                                (q, dy, g, dfinal, before), outputs, **config)
    return after, dh0[0] if initial else None, parts.sum(-1)

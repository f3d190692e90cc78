"""The Metal rendering of every kernel, checked without a Mac.

Each kernel body is rendered to Metal, wrapped exactly as
``mx.fast.metal_kernel`` wraps it for the calls recurops makes (signature from
the input and output names, dtypes and ranks, template arguments,
instantiation), and compiled syntax-only as C++14 against a stub of the Metal
standard library with no system headers (``recurops.testing.check_metal``).
The second half shows the check catches what running the CUDA rendering cannot.
"""

import re
import sys

import mlx.core as mx
import numpy as np
import pytest
from kernel_cases import plan_spans

import recurops
import recurops.testing.wrap
from recurops.fallback import scalar_chunked
from recurops.kernels import chassis, chunked, rotlru
from recurops.testing import Kernel, MetalSourceError, check_metal, simulate
from recurops.testing.executor import syntax_check

# Runs wherever POSIX ucontext exists; a missing C++ compiler there is a failure, not a skip,
# so CI can never pass without running the kernel sources.
pytestmark = pytest.mark.skipif(sys.platform not in ("linux", "darwin"),
                                reason="the kernel simulator needs POSIX ucontext")

# Small calls that reach every kernel variant: each kind, per-head and
# per-channel decays / gates, and every input dtype the kernels take.
_SIZES = {
    "ssd": [dict(x=(2, 5, 4, 40), dt=(2, 5, 4), A=(4,), B=(2, 5, 2, 3), C=(2, 5, 2, 3)),
            dict(x=(1, 5, 2, 33), dt=(1, 5, 2), A=(2, 36), B=(1, 5, 1, 36), C=(1, 5, 1, 36))],
    "gla": [dict(q=(2, 5, 2, 8), k=(2, 5, 2, 8), v=(2, 5, 2, 40), g=(2, 5, 2)),
            dict(q=(2, 5, 2, 6), k=(2, 5, 2, 6), v=(2, 5, 2, 33), g=(2, 5, 2, 6))],
    "rglru": [dict(a=(2, 5, 45), x=(2, 5, 45))],
    "rotlru": [dict(a=(2, 5, 19), cos=(2, 5, 19), sin=(2, 5, 19), x=(2, 5, 38))],
    "s6": [dict(u=(2, 5, 40), delta=(2, 5, 40), A=(40, 4), B=(2, 5, 4), C=(2, 5, 4)),
           dict(u=(1, 5, 33), delta=(1, 5, 33), A=(33, 20), B=(1, 5, 20), C=(1, 5, 20))],
}
DTYPES = (mx.float32, mx.bfloat16, mx.float16)
# Half-precision fallback calls whose chunks run on matrix tiles (chunked's
# tile kernels: 32-step chunks, 16 key and 8 value channels; the values'
# rows read in the inputs' dtype)
_TILED = {"gla": dict(q=(1, 40, 2, 16), k=(1, 40, 2, 16), v=(1, 40, 2, 8), g=(1, 40, 2)),
          "ssd": dict(x=(1, 40, 2, 8), dt=(1, 40, 2), A=(2,), B=(1, 40, 1, 16),
                      C=(1, 40, 1, 16))}


def _call(kind, sizes, dtype):
    rng = np.random.default_rng(0)
    arrays = []
    for name, shape in sizes.items():
        a = rng.uniform(0.1, 0.9, shape).astype(np.float32)
        arrays.append(mx.array(-a if name == "A" else a).astype(dtype))
    return arrays


def _grads(kind, arrays, impl="kernel", state=None):
    def loss(*a):
        return recurops.scan(kind, *a, state=state, impl=impl)[0].astype(mx.float32).sum()

    return mx.grad(loss, tuple(range(len(arrays))))(*arrays)


def _longer(sizes, length):
    """``sizes`` with ``length`` steps (axis 1 of every input that has a time axis)."""
    return {name: shape[:1] + (length,) + shape[2:] if len(shape) >= 3 else shape
            for name, shape in sizes.items()}


def _launches(dialect):
    """Every kernel launch (forward and backward) of the calls above, unexecuted;
    those of spans side by side (kernels/spans.py) at 65 steps, three spans;
    and those of the chunked fallback's fused pieces (float32, as on a GPU)."""
    with simulate(dialect, execute=False) as sim, pytest.MonkeyPatch.context() as patch:
        for kind, variants in _SIZES.items():
            for sizes in variants:
                for dtype in DTYPES:
                    mx.eval(_grads(kind, _call(kind, sizes, dtype)))
        plan_spans(patch, forward=True, backward=True)
        for kind, variants in _SIZES.items():
            for dtype in DTYPES:
                mx.eval(_grads(kind, _call(kind, _longer(variants[0], 65), dtype)))
        patch.setattr(scalar_chunked, "_fused", chunked.takes)
        for kind in ("ssd", "gla"):
            for sizes in _SIZES[kind]:
                mx.eval(_grads(kind, _call(kind, sizes, mx.float32), impl="fallback"))
        for dtype in (mx.bfloat16, mx.float16):  # outputs on matrix tiles
            for kind, sizes in _TILED.items():
                arrays = _call(kind, sizes, dtype)
                start = mx.ones_like(recurops.scan(kind, *arrays)[1])
                for state in (None, start):  # with and without an initial state
                    mx.eval(_grads(kind, arrays, impl="fallback", state=state))
    unique = {launch.wrapped.kernel_name: launch for launch in sim.launches}
    return list(unique.values())


METAL = _launches("metal")
CUDA = _launches("cuda")


_CHUNKED_PIECES = (chunked.PASS_STATES, chunked.PASS_COTANGENTS, chunked.DECAYS,
                   chunked.ROW_DOTS, chunked.GATE_GRAD, chunked.SCALED_SUM,
                   chunked.CHANNEL_SCORES, chunked.CHANNEL_SCORES_GRAD)


def test_every_kernel_and_dtype_is_covered():
    seen = {(launch.name, str(dict(launch.wrapped.template).get("T"))) for launch in METAL}
    assert seen == {(f"{kind}_{part}", str(dtype)) for kind in _SIZES
                    for part in ("fwd", "bwd", "ends", "carries") for dtype in DTYPES} | {
        (source.name, "None") for source in
        (*_CHUNKED_PIECES, chunked.CHUNK_STATES, chunked.CHUNK_COTANGENTS,
         chunked.CHUNK_STATES_FROM_ZEROS, chunked.CHUNK_COTANGENTS_TO_ZEROS,
         chunked.CHUNK_STATE_ROW_SUMS, chunked.CHUNK_SCORES, rotlru.PASS)} | {
        # the tiles' outputs and the gradients of the values, q and k in the inputs' dtype,
        # for one head and for heads that share q and k (reading their scores)
        (source.name, str(dtype)) for source in (
            chunked.CHUNK_OUTPUTS, chunked.CHUNK_OUTPUTS_FROM_SCORES, chunked.CHUNK_SCORES_GRAD,
            chunked.CHUNK_SCORES_GRAD_FROM_SCORES, chunked.SUMMED_STATE_PRODUCTS)
        for dtype in DTYPES[1:]}


@pytest.mark.parametrize("launch", METAL, ids=lambda launch: launch.wrapped.kernel_name[14:70])
def test_metal_source_type_checks(launch):
    text = launch.wrapped.text
    assert "[[kernel]] void " + launch.wrapped.kernel_name in text
    if launch.wrapped.template:
        assert "template [[host_name(" in text  # the instantiation MLX appends
    check_metal(text)


@pytest.mark.parametrize("launch", CUDA, ids=lambda launch: launch.wrapped.kernel_name[14:70])
def test_cuda_source_type_checks(launch):
    """The CUDA renderings (float16 included, which the simulated runs skip) compile too."""
    syntax_check(launch.wrapped.text, std="c++17")


def _mlx_metal_sources(kind, arrays, capfd, tmp_path, impl="kernel"):
    """{kernel name: source} that MLX itself generates for these calls' Metal kernels.

    MLX writes a custom kernel's source even without Metal while it traces a
    function for ``mx.export_function``; ``verbose=True`` prints it.
    """
    from recurops import _api

    def build(source, backend):
        header, body = chassis.render(source.body, "metal")
        kernel = mx.fast.metal_kernel(name=f"recurops_{source.name}",
                                      input_names=list(source.inputs),
                                      output_names=list(source.outputs), source=body,
                                      header=header)
        return lambda **kw: kernel(**kw, verbose=True)

    def grads(*a):
        return _grads(kind, a, impl)

    saved = (chassis.build, chassis.backend, _api.gpu_backend)
    chassis.build, chassis.backend, _api.gpu_backend = build, lambda: "metal", lambda: "metal"
    capfd.readouterr()
    error = None
    try:
        mx.export_function(str(tmp_path / f"{kind}.mlxfn"), grads, *arrays)
    except (RuntimeError, ValueError) as e:  # serializing custom_function fails after tracing
        error = e
    finally:
        chassis.build, chassis.backend, _api.gpu_backend = saved
    printed = capfd.readouterr().out
    if "Generated source code for" not in printed:
        pytest.skip(f"this MLX does not generate Metal sources here: {error}")
    sources = {}
    for block in printed.split("Generated source code for `")[1:]:
        text = block.split("```\n", 1)[1].split("\n```", 1)[0]
        name = text.split("[[kernel]] void ", 1)[1].split("(", 1)[0]
        sources[name] = text
    return sources


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(_SIZES))
def test_wrapping_is_byte_identical_to_mlx(kind, dtype, capfd, tmp_path):
    """``recurops.testing.wrap`` writes exactly the Metal source MLX generates for each call."""
    prelude = recurops.testing.wrap.METAL_PRELUDE
    for sizes in _SIZES[kind]:
        arrays = _call(kind, sizes, dtype)
        theirs = _mlx_metal_sources(kind, arrays, capfd, tmp_path)
        with simulate("metal", execute=False) as sim:
            mx.eval(_grads(kind, arrays))
        ours = {launch.wrapped.kernel_name: launch.wrapped.text[len(prelude):]
                for launch in sim.launches}
        assert len(theirs) == 2 and set(theirs) == set(ours)
        for name, text in theirs.items():
            assert ours[name] == text, name


@pytest.mark.parametrize("kind", ["ssd", "gla"])
def test_chunked_pieces_wrapping_is_byte_identical_to_mlx(kind, capfd, tmp_path, monkeypatch):
    """The same for the chunked fallback's fused pieces (per-head and per-channel decays)."""
    prelude = recurops.testing.wrap.METAL_PRELUDE
    monkeypatch.setattr(scalar_chunked, "_fused", chunked.takes)
    theirs, ours = {}, {}
    for sizes in _SIZES[kind]:
        arrays = _call(kind, sizes, mx.float32)
        theirs |= _mlx_metal_sources(kind, arrays, capfd, tmp_path, impl="fallback")
        with simulate("metal", execute=False) as sim:
            mx.eval(_grads(kind, arrays, impl="fallback"))
        ours |= {launch.wrapped.kernel_name: launch.wrapped.text[len(prelude):]
                 for launch in sim.launches}
    assert set(theirs) == set(ours)
    # a kernel's name: the source's, then its template values ("__...") or its argument types
    sources = {re.match(r"custom_kernel_recurops_(.+?)(__|_float)", name)[1] for name in theirs}
    assert sources == {source.name for source in _CHUNKED_PIECES}
    for name, text in theirs.items():
        assert ours[name] == text, name


# ---- what the check catches ---------------------------------------------------------------

def _bwd(kind="ssd", dtype="bfloat16_t"):
    return next(launch.wrapped for launch in METAL if launch.name == f"{kind}_bwd"
                and launch.wrapped.kernel_name.split("__")[1].startswith(dtype))


def _rejected(text, *needles):
    with pytest.raises(MetalSourceError) as info:
        check_metal(text)
    for needle in needles:
        assert needle in str(info.value), str(info.value)[-2000:]


def test_catches_cuda_shuffle_in_metal_render():
    text = _bwd().text
    assert "simd_sum(ddt_t)" in text
    _rejected(text.replace("simd_sum(ddt_t)", "__shfl_xor_sync(0xffffffffu, ddt_t, 16)"),
              "__shfl_xor_sync")


@pytest.mark.parametrize("good,bad", [
    ("metal::exp(", "metal::epx("),  # misspelt Metal function
    ("simd_sum(", "simd_summ("),  # misspelt simdgroup function
    ("static_cast<float>", "static_cats<float>"),  # misspelt C++ keyword
])
def test_catches_misspelt_names(good, bad):
    text = _bwd().text
    assert good in text
    _rejected(text.replace(good, bad, 1), bad.rstrip("(<"))


def test_catches_misspelt_address_space_qualifier():
    """A helper in the kernel header with ``devcie`` for ``device``."""
    w = _bwd()
    helper = "inline float first(const devcie float* p) { return p[0]; }\n"
    _rejected(w.text.replace("template <typename T", helper + "template <typename T", 1),
              "devcie")


def _probe(body, **tokens):
    """``body`` rendered to Metal (with some tokens respelt) and wrapped as MLX wraps it."""
    saved = chassis.DIALECTS
    metal = saved["metal"]
    chassis.DIALECTS = {**saved, "metal": chassis.Dialect(
        "metal", metal.header, {**metal.tokens, **tokens})}
    try:
        header, source = chassis.render(body, "metal")
    finally:
        chassis.DIALECTS = saved
    k = Kernel("probe", ["inp"], ["out"], source, header, "metal")
    return k.wrapped([np.zeros(64, np.float32)], ["float32"], [("T", mx.float32)]).text


PROBE = "const int tid = THREAD_ID; out[tid] = EXP(inp[tid]) + WARP_SUM(1.0f);"


def test_catches_misspelt_thread_attribute():
    """MLX adds ``[[thread_position_in_grid]]`` only if the body spells it right."""
    text = _probe(PROBE, THREAD_ID="((int)thread_position_in_gird.x)")
    assert "[[thread_position_in_grid]]" not in text
    _rejected(text, "thread_position_in_gird")


def _cuda_runs(body):
    """The same body rendered to CUDA compiles and runs in the simulator."""
    header, source = chassis.render(body, "cuda")
    k = Kernel("probe", ["inp"], ["out"], source, header, "cuda")
    (out,) = k(inputs=[np.ones(64, np.float32)], output_shapes=[(64,)],
               output_dtypes=[np.float32], grid=(64, 1, 1), threadgroup=(64, 1, 1))
    return out


def test_catches_cuda_only_math_in_shared_body():
    body = "const int tid = THREAD_ID; out[tid] = expf(inp[tid]);"
    assert np.allclose(_cuda_runs(body), np.e)  # fine on CUDA ...
    _rejected(_probe(body), "expf")  # ... but Metal has no expf


def test_catches_missing_cast():
    """``metal::exp`` has no ``int`` overload; CUDA's ``expf`` converts silently."""
    body = "const int tid = THREAD_ID; out[tid] = EXP(tid % 2);"
    assert np.allclose(_cuda_runs(body)[:2], [1.0, np.e])
    _rejected(_probe(body), "use of deleted function", "metal::exp")


def test_catches_vector_used_as_scalar():
    _rejected(_probe("const int tid = thread_position_in_grid; out[tid] = inp[tid];"),
              "uint3")


@pytest.mark.parametrize("body,needle", [
    ("double acc = inp[THREAD_ID]; out[THREAD_ID] = acc;", "double"),
    ("const int n = inp_shape[0]; float buf[n]; buf[0] = 1.0f; out[0] = buf[0];", "variable"),
    ("float* p = new float[2]; out[0] = p[0];", "new"),
])
def test_catches_cxx_that_metal_forbids(body, needle):
    _rejected(_probe(body), needle)


def test_unmodified_probe_passes():
    check_metal(_probe(PROBE))


METAL_THREADGROUP_BYTES = 32768  # Metal's limit on a threadgroup's memory (CUDA's static: 48 KB)


def _threadgroup_check(source, template: dict, label: str) -> str:
    """C++ that fails to compile where ``source``'s threadgroup arrays, with
    these template constants, exceed Metal's limit: the body's ``constexpr
    int`` lines (the first of each name) and the sizes of its ``SHARED``
    arrays, in a namespace of their own."""
    lines = [f"constexpr int {name} = {value};" for name, value in template.items()]
    seen, sizes = set(template), []
    for line in source.body.splitlines():
        constant = re.match(r"\s*constexpr int (\w+) = (.+?);", line)
        if constant and constant[1] not in seen:
            seen.add(constant[1])
            lines.append(f"constexpr int {constant[1]} = {constant[2]};")
        shared = re.match(r"\s*SHARED float \w+\[(.+?)\];", line)
        if shared:
            sizes.append(f"({shared[1]})")
    assert sizes, source.name
    total = " + ".join(sizes)
    return (f"namespace {label} {{\n" + "\n".join(lines) +
            f'\nstatic_assert(4 * ({total}) <= {METAL_THREADGROUP_BYTES}, "{label}");\n}}\n')


def test_tile_kernels_fit_metal_threadgroup_memory():
    """Every chunk length and head dims the tile kernels take (``tiles_take``:
    up to 128 value channels, any multiple of 16 keys) keeps their threadgroup
    arrays within Metal's 32 KB; a CUDA GPU would take more, a Mac would fail
    to launch. The check is the compiler's, on the sizes the bodies declare."""
    checks = []
    for steps in chunked.TILED_STEPS:
        for dk in (16, 128, 256):
            for dv in (8, 64, 120, 128):
                assert chunked.tiles_take(steps, dk, dv)
                block = {"CH": steps, "KD": dk, "VD": dv}
                carry = chunked._carry_launch(1, 1, steps, dk, dv, False)["template"]
                for source, template in ((chunked.CHUNK_OUTPUTS, block),
                                         (chunked.CHUNK_OUTPUTS_FROM_SCORES, block),
                                         (chunked.CHUNK_SCORES_GRAD, block),
                                         (chunked.CHUNK_SCORES_GRAD_FROM_SCORES, block),
                                         (chunked.CHUNK_SCORES, block),
                                         (chunked.SUMMED_STATE_PRODUCTS, block),
                                         (chunked.CHUNK_STATE_ROW_SUMS, block),
                                         (chunked.CHUNK_STATES, carry),
                                         (chunked.CHUNK_STATES_FROM_ZEROS, carry),
                                         (chunked.CHUNK_COTANGENTS, carry),
                                         (chunked.CHUNK_COTANGENTS_TO_ZEROS, carry)):
                    label = f"{source.name}_{steps}_{dk}_{dv}"
                    checks.append(_threadgroup_check(source, template, label))
    syntax_check("".join(checks))

"""Run MLX custom-kernel sources on the CPU, for tests and debugging.

:class:`Kernel` mirrors ``mx.fast.metal_kernel`` / ``mx.fast.cuda_kernel``:
it takes a kernel body, builds the full source MLX would compile for each call
(:mod:`recurops.testing.wrap`), compiles it as C++ with the system compiler
against small stubs of the Metal / CUDA names it uses (cached by a hash of the
source), and runs the launch grid on CPU threads:

* every GPU thread is a fiber with its own stack; the threads of a threadgroup
  (CUDA block) run on one OS thread, threadgroups are spread over a few;
* thread positions follow each API: CUDA launches ``ceil(grid / block)`` full
  blocks (threads past the grid run too), Metal's ``dispatchThreads`` clips
  the edge threadgroup to the grid;
* lanes are grouped into 32-wide simdgroups / warps, and a warp operation
  (``simd_sum``, ``__shfl_xor_sync``, ...) is a barrier: every lane of the
  warp must reach it, and the result is computed once all have. A lane that
  returns while others of its warp wait in one is an error
  (:class:`SimulationError`), not a hang;
* buffers are NumPy copies with guard bytes either side; inputs' guards hold
  NaN, outputs start as NaN (so an element a kernel never writes shows up);
  the kernel gets them as bounds-checked pointers, so an index outside a
  buffer, read or write, is an error naming the buffer, index and thread
  (a helper handed a raw pointer is not checked; its writes past an
  output's ends still show in the guards).

It is a functional simulation, not a GPU: see docs/kernel-simulation.md.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _runtime, _stubs, wrap

SIMD_WIDTH = 32
GUARD = 256  # bytes of guard either side of every buffer
STACK_KB = 256  # per simulated thread
FLAGS = ("-std=c++17", "-O1", "-fPIC", "-fno-strict-aliasing", "-ffp-contract=off",
         "-fno-exceptions", "-fno-rtti", "-Wno-attributes", "-Werror=vla")

_NP = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16,
       "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "bool": np.bool_}


class SimulationError(RuntimeError):
    """A kernel broke a rule of the GPU execution model (or wrote out of bounds)."""


class BuildError(RuntimeError):
    """The system compiler rejected a kernel source; the message holds its diagnostics."""


def compiler() -> str | None:
    """The C++ compiler the simulator uses: ``$RECUROPS_SIM_CXX``, else c++ / g++ / clang++."""
    env = os.environ.get("RECUROPS_SIM_CXX")
    if env:
        return env
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def available() -> str | None:
    """None if the simulator can run here, else why not."""
    if sys.platform not in ("linux", "darwin"):
        return f"the kernel simulator needs POSIX ucontext (platform {sys.platform})"
    if compiler() is None:
        return "no C++ compiler found (set RECUROPS_SIM_CXX)"
    return None


def cache_dir() -> str:
    """Where builds are cached: ``$RECUROPS_SIM_CACHE``, else a per-user temp folder."""
    path = os.environ.get("RECUROPS_SIM_CACHE") or os.path.join(
        tempfile.gettempdir(), f"recurops-sim-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(path, exist_ok=True)
    return path


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


_LOCK = threading.Lock()
_STATE: dict = {}


def _compiler_id(cxx: str) -> str:
    key = ("id", cxx)
    if key not in _STATE:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True)
        _STATE[key] = out.stdout.splitlines()[0] if out.stdout else cxx
    return _STATE[key]


def include_dir() -> str:
    """A folder holding the stub headers (written once per content hash)."""
    files = dict(_stubs.FILES)
    files["recurops_sim.h"] = _runtime.API
    key = _digest(*(k + v for k, v in sorted(files.items())))
    path = os.path.join(cache_dir(), f"include-{key}")
    if not os.path.isdir(path):
        tmp = tempfile.mkdtemp(dir=cache_dir())
        for rel, text in files.items():
            full = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)
        try:
            os.rename(tmp, path)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _run(cmd, what: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(cmd[:1])} exit {out.returncode}):\n"
                         f"{out.stderr.strip()}")


def _atomic_build(target: str, build) -> str:
    if os.path.exists(target):
        return target
    tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _runtime_object() -> str:
    cxx = compiler()
    inc = include_dir()
    key = _digest(_runtime.RUNTIME, _runtime.API, _compiler_id(cxx), *FLAGS)
    src = os.path.join(cache_dir(), f"runtime-{key}.cpp")
    obj = os.path.join(cache_dir(), f"runtime-{key}.o")
    if not os.path.exists(src):
        with open(src + ".tmp", "w") as f:
            prefix = "#ifdef __APPLE__\n#define _XOPEN_SOURCE 600\n#endif\n"
            f.write(prefix + _runtime.RUNTIME)
        os.replace(src + ".tmp", src)
    return _atomic_build(obj, lambda out: _run(
        [cxx, *FLAGS, "-I", inc, "-c", src, "-o", out], "building the simulator runtime"))


def syntax_check(text: str, *, std: str = "c++17", extra=()) -> None:
    """Parse and type-check ``text`` against the stubs; BuildError with diagnostics if not."""
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (set RECUROPS_SIM_CXX)")
    fd, path = tempfile.mkstemp(suffix=".cpp", dir=cache_dir())
    with os.fdopen(fd, "w") as f:
        f.write(text)
    try:
        flags = [f for f in FLAGS if not f.startswith("-std=")]
        _run([cxx, f"-std={std}", *flags, "-nostdinc", "-I", include_dir(),
              *extra, "-fsyntax-only", path], "the source check")
    finally:
        os.remove(path)


def build(text: str) -> str:
    """Compile a translation unit (kernel source plus entry) into a cached shared library."""
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (set RECUROPS_SIM_CXX)")
    runtime = _runtime_object()
    key = _digest(text, _compiler_id(cxx), *FLAGS, runtime, include_dir())
    lib = os.path.join(cache_dir(), f"kernel-{key}.so")
    src = os.path.join(cache_dir(), f"kernel-{key}.cpp")
    if os.path.exists(lib):
        return lib
    with open(src + f".{os.getpid()}.tmp", "w") as f:
        f.write(text)
    os.replace(src + f".{os.getpid()}.tmp", src)
    return _atomic_build(lib, lambda out: _run(
        [cxx, *FLAGS, "-nostdinc", "-I", include_dir(), "-DRECUROPS_SIM_EXEC", "-shared",
         src, runtime, "-o", out, "-lm"], f"compiling {src}"))


def _entry(w: wrap.Wrapped) -> str:
    """C++ that calls the kernel of ``w`` (wrapped with ``checked=True``) with
    the buffers and extras the executor passes: after the shapes, strides and
    ranks, the buffers' element counts and the launch's access report."""
    args, extra = [], 0
    for p in w.params:
        if p.kind in ("input", "output"):
            slot = p.index if p.kind == "input" else f"NIN + {p.index}"
            if p.ctype.endswith("&"):  # a Metal scalar input
                args.append(f"*static_cast<{p.ctype[:-1]}*>(bufs[{slot}])")
            else:
                pointee = p.ctype[len(wrap.CHECKED) + 1:-1]
                args.append(f"{p.ctype}{{static_cast<{pointee}*>(bufs[{slot}]), "
                            f"sizes[{slot}], {slot}, report}}")
        elif p.kind in ("shape", "strides", "ndim"):
            if w.dialect == "cuda":
                conv = {"shape": "::recurops_sim_cuda::shape(extras[{}])",
                        "strides": "::recurops_sim_cuda::strides(extras[{}])",
                        "ndim": "*static_cast<const int*>(extras[{}])"}[p.kind]
            else:
                conv = {"shape": "static_cast<const int*>(extras[{}])",
                        "strides": "static_cast<const int64_t*>(extras[{}])",
                        "ndim": "*static_cast<const int*>(extras[{}])"}[p.kind]
            args.append(conv.format(extra))
            extra += 1
        else:
            args.append(_ATTRIBUTES[p.name])
    if w.dialect == "cuda":
        call = f"mlx::core::cu::{w.kernel_name}"
    else:
        values = ", ".join(wrap._template_value(v, "metal") for _, v in w.template)
        call = w.kernel_name + (f"<{values}>" if w.template else "")
    nin = sum(p.kind == "input" for p in w.params)
    return (
        "\n// ---- recurops simulator entry ----\n"
        'extern "C" void recurops_sim_entry(void* const* bufs, const void* const* extras) {\n'
        f"  constexpr int NIN = {nin};\n"
        "  (void)NIN;\n"
        f"  const long long* sizes = static_cast<const long long*>(extras[{extra}]);\n"
        "  auto* report = static_cast<::recurops_sim::access_report*>(\n"
        f"      const_cast<void*>(extras[{extra + 1}]));\n"
        "  (void)sizes; (void)report;\n"
        "  const recurops_sim_thread* t = recurops_sim_self();\n"
        "  (void)t;\n"
        f"  {call}(\n      " + ",\n      ".join(args) + ");\n}\n"
    )


def _u3(field: str) -> str:
    return f"uint3{{t->{field}[0], t->{field}[1], t->{field}[2]}}"


_ATTRIBUTES = {
    "thread_position_in_grid": _u3("grid_pos"),
    "thread_position_in_threadgroup": _u3("group_pos"),
    "threadgroup_position_in_grid": _u3("group_idx"),
    "threads_per_threadgroup": _u3("group_dim"),
    "dispatch_threads_per_threadgroup": _u3("group_dim"),
    "threads_per_grid": _u3("grid_dim"),
    "grid_size": _u3("grid_dim"),
    "grid_origin": "uint3{0u, 0u, 0u}",
    "threadgroups_per_grid": _u3("groups"),
    "thread_index_in_threadgroup": "t->index_in_group",
    "thread_index_in_simdgroup": "t->lane",
    "thread_execution_width": "t->simd_width",
    "threads_per_simdgroup": "t->simd_width",
    "simdgroup_index_in_threadgroup": "t->simd_index",
    "simdgroups_per_threadgroup": "t->simds_per_group",
    "dispatch_simdgroups_per_threadgroup": "t->simds_per_group",
    "thread_index_in_quadgroup": "(t->index_in_group % 4u)",
    "quadgroup_index_in_threadgroup": "(t->index_in_group / 4u)",
    "quadgroups_per_threadgroup": "(t->simds_per_group * 8u)",
    "dispatch_quadgroups_per_threadgroup": "(t->simds_per_group * 8u)",
}


def _load(path: str):
    with _LOCK:
        lib = _STATE.get(("lib", path))
        if lib is None:
            lib = ctypes.CDLL(path)
            lib.recurops_sim_launch.restype = ctypes.c_int
            lib.recurops_sim_launch.argtypes = [
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                ctypes.c_char_p, ctypes.c_int]
            _STATE[("lib", path)] = lib
        return lib


def _host(x):
    """``(numpy array, dtype name)`` of an input: NumPy arrays or MLX arrays."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x), wrap.dtype_name(x.dtype)
    mod = type(x).__module__
    if mod.startswith("mlx"):
        import mlx.core as mx

        name = wrap.dtype_name(x.dtype)
        if name == "bfloat16":
            return np.ascontiguousarray(np.array(x.view(mx.uint16))), name
        return np.ascontiguousarray(np.array(x)), name
    arr = np.ascontiguousarray(np.asarray(x))
    return arr, wrap.dtype_name(arr.dtype)


class _Buffer:
    """A contiguous copy of an array with ``GUARD`` bytes either side."""

    def __init__(self, data: np.ndarray, output: bool):
        nbytes = data.nbytes
        # inputs: NaN guards (an out-of-bounds read poisons the result); outputs: NaN
        # body (an element never written shows) and 0xFE guards (a write shows)
        self.pattern = 0xFE if output else 0xFF
        self.raw = np.full(GUARD * 2 + max(nbytes, 1), self.pattern, np.uint8)
        self.nbytes = nbytes
        self.raw[GUARD:GUARD + nbytes] = 0xFF if output else data.reshape(-1).view(np.uint8)
        self.ptr = self.raw.ctypes.data + GUARD

    def body(self) -> np.ndarray:
        return self.raw[GUARD:GUARD + self.nbytes]

    def guards_intact(self) -> bool:
        return bool((self.raw[:GUARD] == self.pattern).all()
                    and (self.raw[GUARD + self.nbytes:] == self.pattern).all())


def _workers() -> int:
    env = os.environ.get("RECUROPS_SIM_THREADS")
    if env:
        return max(1, int(env))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, 8))


class Kernel:
    """A custom kernel run by the CPU simulator; the calling convention of MLX's.

    ``dialect`` is ``"metal"`` (``mx.fast.metal_kernel``) or ``"cuda"``
    (``mx.fast.cuda_kernel``). Calling it takes NumPy (or MLX) arrays and
    returns NumPy arrays (bfloat16 outputs as float32).
    """

    def __init__(self, name, input_names, output_names, source, header="", dialect="metal",
                 ensure_row_contiguous=True):
        if dialect not in ("metal", "cuda"):
            raise ValueError(f"dialect must be 'metal' or 'cuda', got {dialect!r}")
        self.name = name
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.source = source
        self.header = header
        self.dialect = dialect

    def wrapped(self, inputs, output_dtypes, template=()) -> wrap.Wrapped:
        """The full source MLX generates for a call with these inputs."""
        args = []
        for n, x in zip(self.input_names, inputs):
            if hasattr(x, "dtype") and hasattr(x, "ndim"):
                args.append(wrap.Arg(n, wrap.dtype_name(x.dtype), x.ndim, int(np.prod(x.shape))))
            else:
                args.append(x)  # already an Arg
        return wrap.wrap(self.dialect, self.name, self.input_names, self.output_names,
                         self.source, self.header, args, output_dtypes, template)

    def __call__(self, *, inputs, output_shapes, output_dtypes, grid, threadgroup,
                 template=(), init_value=None, verbose=False, stream=None):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} inputs, got {len(inputs)}")
        template = list(template.items()) if isinstance(template, dict) else list(template)
        host = [_host(x) for x in inputs]
        out_names = [wrap.dtype_name(d) for d in output_dtypes]
        args = [wrap.Arg(n, dt, a.ndim, a.size) for n, (a, dt) in zip(self.input_names, host)]
        parts = (self.dialect, self.name, self.input_names, self.output_names, self.source,
                 self.header, args, out_names, template)
        if verbose:
            print(wrap.wrap(*parts).text)
        run = wrap.wrap(*parts, checked=True)
        lib = _load(build(run.text + _entry(run)))

        ins = [_Buffer(a, output=False) for a, _ in host]
        outs = []
        for shape, dt in zip(output_shapes, out_names):
            count = int(np.prod(shape))
            data = np.zeros(count, _NP[dt])
            buf = _Buffer(data, output=True)
            if init_value is not None:
                init = np.full(count, init_value, np.float32)
                init = _encode(init, dt)
                buf.body()[:] = init.view(np.uint8)
            outs.append(buf)
        extras = []
        for p in run.params:
            if p.kind in ("shape", "strides", "ndim"):
                a = host[p.index][0]
                if p.kind == "shape":
                    v = np.zeros(8, np.int32)
                    v[:a.ndim] = a.shape
                elif p.kind == "strides":
                    v = np.zeros(8, np.int64)
                    v[:a.ndim] = [s // a.itemsize for s in a.strides]
                else:
                    v = np.array([a.ndim], np.int32)
                extras.append(v)
        sizes = np.array([a.size for a, _ in host] + [int(np.prod(s)) for s in output_shapes],
                         np.int64)
        report = np.zeros(7, np.int64)  # recurops_sim::access_report
        extras += [sizes, report]
        bufs = (ctypes.c_void_p * max(len(ins) + len(outs), 1))(*[b.ptr for b in ins + outs])
        extra_ptrs = (ctypes.c_void_p * max(len(extras), 1))(*[e.ctypes.data for e in extras])

        grid = tuple(int(g) for g in grid)
        tg = tuple(int(t) for t in threadgroup)
        if self.dialect == "metal":
            group = tuple(min(t, g) for t, g in zip(tg, grid))
            clip = 1
        else:
            group = tg
            clip = 0
        if any(g <= 0 for g in grid) or any(t <= 0 for t in group):
            return [self._result(b, s, dt) for b, s, dt in zip(outs, output_shapes, out_names)]
        if group[0] * group[1] * group[2] > 1024:
            raise SimulationError(f"{self.name}: threadgroup of {group} exceeds 1024 threads")
        ngroups = tuple(-(-g // t) for g, t in zip(grid, group))
        total = ngroups[0] * ngroups[1] * ngroups[2]
        u3 = ctypes.c_uint * 3
        g_arr, n_arr, grid_arr = u3(*group), u3(*ngroups), u3(*grid)
        entry = ctypes.cast(lib.recurops_sim_entry, ctypes.c_void_p)
        workers = min(_workers(), total)
        bounds = [total * i // workers for i in range(workers + 1)]

        def chunk(i):
            err = ctypes.create_string_buffer(2048)
            rc = lib.recurops_sim_launch(entry, bufs, extra_ptrs, g_arr, n_arr, grid_arr,
                                         clip, SIMD_WIDTH, bounds[i], bounds[i + 1], STACK_KB,
                                         err, len(err))
            return rc, err.value.decode(errors="replace")

        if workers == 1:
            results = [chunk(0)]
        else:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(chunk, range(workers)))
        for rc, msg in results:
            if rc:
                raise SimulationError(f"{self.name} ({self.dialect}): {msg}")
        if report[0]:
            names = self.input_names + self.output_names
            raise SimulationError(
                f"{self.name} ({self.dialect}): thread {tuple(int(x) for x in report[4:])} "
                f"accessed {names[report[1]]}[{report[2]}], outside its {report[3]} elements")
        for name, b in zip(self.output_names, outs):
            if not b.guards_intact():
                raise SimulationError(f"{self.name} ({self.dialect}): the kernel wrote outside "
                                      f"output {name!r}")
        return [self._result(b, s, dt) for b, s, dt in zip(outs, output_shapes, out_names)]

    @staticmethod
    def _result(buf: _Buffer, shape, dt: str) -> np.ndarray:
        arr = buf.body().view(_NP[dt]).reshape(shape).copy()
        if dt == "bfloat16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def _encode(values: np.ndarray, dt: str) -> np.ndarray:
    if dt == "bfloat16":
        u = values.astype(np.float32).view(np.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return values.astype(_NP[dt])

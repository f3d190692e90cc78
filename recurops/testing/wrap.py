"""The full source MLX compiles for a custom kernel, written the way MLX writes it.

``mx.fast.metal_kernel`` and ``mx.fast.cuda_kernel`` take a kernel *body* and
generate the rest at call time from the input and output names, the input
dtypes and ranks, the output dtypes and the template arguments. These
functions reproduce that text (MLX 0.32: ``write_signature`` in
``mlx/backend/metal/custom_kernel.cpp`` and ``build_kernel`` in
``mlx/backend/cuda/custom_kernel.cpp``) so the simulator and the Metal check
see exactly what the GPU compiler would, with two substitutions: MLX's Metal
prelude (``metal::utils()``) and its CUDA device headers become the small stubs
in ``recurops.testing._stubs``. With ``checked=True`` (the executor's
builds) the buffer parameters become the simulator's bounds-checked
``recurops_sim::checked`` pointers instead; the body is unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# dtype name -> (Metal type, CUDA type)
TYPES = {
    "float32": ("float", "float"),
    "float16": ("float16_t", "__half"),
    "bfloat16": ("bfloat16_t", "__nv_bfloat16"),
    "int32": ("int32_t", "int32_t"),
    "uint32": ("uint32_t", "uint32_t"),
    "int64": ("int64_t", "int64_t"),
    "bool": ("bool", "bool"),
}

# Metal thread attributes MLX adds to the signature when the body names them.
METAL_ATTRIBUTES = (
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"),
    ("grid_origin", "uint3"),
    ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"),
    ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"),
    ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"),
    ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"),
    ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"),
    ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"),
    ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)

MAX_CONSTANT_ARRAY_SIZE = 8  # smaller Metal inputs go in the constant address space

CUDA_DEFAULT_HEADER = """
#include "mlx/backend/cuda/device/utils.cuh"

#include <cooperative_groups.h>

#define inf cuda::std::numeric_limits<float>::infinity()

"""

METAL_PRELUDE = '#include "recurops_mlx_metal_utils.h"\n'  # stands in for metal::utils()


def dtype_name(dtype) -> str:
    """``"float32"``, ``"bfloat16"``, ... for an MLX dtype, NumPy dtype or name."""
    text = str(dtype)
    if text.startswith("mlx.core."):
        text = text[len("mlx.core."):]
    elif not isinstance(dtype, str):
        import numpy as np

        text = np.dtype(dtype).name
    if text not in TYPES:
        raise TypeError(f"the simulator has no type for dtype {dtype!r}")
    return text


@dataclass(frozen=True)
class Arg:
    """What the generated signature needs to know about one input."""

    name: str
    dtype: str  # dtype_name()
    ndim: int
    size: int


@dataclass(frozen=True)
class Param:
    """One kernel parameter, in signature order, and what the executor passes for it."""

    kind: str  # "input", "shape", "strides", "ndim", "output", "attribute"
    name: str  # argument name (input/output), or the attribute
    ctype: str  # C++ type written in the signature
    index: int  # input or output position


@dataclass(frozen=True)
class Wrapped:
    """A kernel as MLX would compile it: its entry name, full text and parameters."""

    dialect: str
    kernel_name: str
    text: str
    params: tuple[Param, ...]
    template: tuple[tuple[str, object], ...]


def _shape_infos(source: str, input_names) -> list[tuple[bool, bool, bool]]:
    return [(f"{n}_shape" in source, f"{n}_strides" in source, f"{n}_ndim" in source)
            for n in input_names]


def _template_value(value, dialect: str) -> str:
    if isinstance(value, bool):
        if dialect == "metal":
            return "1" if value else "0"
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    name = dtype_name(value)
    return TYPES[name][0] if dialect == "metal" else TYPES[name][1]


def _template_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    dtype_name(value)
    return "typename"


CHECKED = "::recurops_sim::checked"  # the simulator's bounds-checked pointer template


def _buffer(pointee: str, checked: bool) -> str:
    """A buffer parameter's C++ type: a pointer to ``pointee``, or its checked form."""
    return f"{CHECKED}<{pointee}>" if checked else f"{pointee}*"


def metal(name, input_names, output_names, source, header, inputs, output_dtypes,
          template=(), checked=False) -> Wrapped:
    """The Metal library source ``mx.fast.metal_kernel`` builds for this call.

    ``inputs`` are :class:`Arg` (dtype, rank, size); ``template`` is the list of
    ``(name, value)`` pairs given to the kernel call.
    """
    template = tuple(template)
    shape_infos = _shape_infos(source, input_names)
    attributes = [(a, t) for a, t in METAL_ATTRIBUTES if a in source]
    kernel_name = "custom_kernel_" + name
    template_def = ""
    if template:
        template_def = "<" + ", ".join(_template_value(v, "metal") for _, v in template) + ">"
        kernel_name += "_" + re.sub(r"<|>|, ", "_", template_def)[:-1]
    for arg in inputs:
        kernel_name += "_" + TYPES[arg.dtype][0]
        if arg.ndim == 0:
            kernel_name += "s"
        elif arg.size < MAX_CONSTANT_ARRAY_SIZE:
            kernel_name += "c"
    for dtype in output_dtypes:
        kernel_name += "_" + TYPES[dtype_name(dtype)][0]

    params: list[Param] = []
    text = header
    if template:
        text += "template <" + ", ".join(
            f"{_template_kind(v)} {n}" for n, v in template) + ">\n"
    text += f"[[kernel]] void {kernel_name}(\n"
    index = 0
    for i, arg in enumerate(inputs):
        location = "constant" if arg.size < MAX_CONSTANT_ARRAY_SIZE else "device"
        pointee = f"const {location} {TYPES[arg.dtype][0]}"
        ctype = f"{pointee}&" if arg.ndim == 0 else _buffer(pointee, checked)
        text += f"  {ctype} {arg.name} [[buffer({index})]],\n"
        params.append(Param("input", arg.name, ctype, i))
        index += 1
        if arg.ndim > 0:
            has_shape, has_strides, has_ndim = shape_infos[i]
            if has_shape:
                text += f"  const constant int* {arg.name}_shape [[buffer({index})]],\n"
                params.append(Param("shape", arg.name, "const constant int*", i))
                index += 1
            if has_strides:
                text += f"  const constant int64_t* {arg.name}_strides [[buffer({index})]],\n"
                params.append(Param("strides", arg.name, "const constant int64_t*", i))
                index += 1
            if has_ndim:
                text += f"  const constant int& {arg.name}_ndim [[buffer({index})]],\n"
                params.append(Param("ndim", arg.name, "const constant int&", i))
                index += 1
    for i, (out, dtype) in enumerate(zip(output_names, output_dtypes)):
        ctype = _buffer(f"device {TYPES[dtype_name(dtype)][0]}", checked)
        text += f"  {ctype} {out} [[buffer({index})]]"
        params.append(Param("output", out, ctype, i))
        # MLX's own condition, quirk included (index counts shape buffers too)
        if index < len(inputs) + len(output_names) - 1 or attributes:
            text += ",\n"
        else:
            text += ") {\n"
        index += 1
    for j, (attr, ctype) in enumerate(attributes):
        text += f"  {ctype} {attr} [[{attr}]]"
        params.append(Param("attribute", attr, ctype, -1))
        text += ",\n" if j < len(attributes) - 1 else ") {\n"
    text += source + "\n}\n"
    if template:
        inst = kernel_name + template_def
        text += (f'\ntemplate [[host_name("{kernel_name}")]] [[kernel]] decltype({inst}) '
                 f"{inst};\n")
    return Wrapped("metal", kernel_name, METAL_PRELUDE + text, tuple(params), template)


def cuda(name, input_names, output_names, source, header, inputs, output_dtypes,
         template=(), checked=False) -> Wrapped:
    """The CUDA source ``mx.fast.cuda_kernel`` builds (and NVRTC compiles) for this call."""
    template = tuple(template)
    shape_infos = _shape_infos(source, input_names)
    suffix = ""
    for _, value in template:
        if isinstance(value, bool):
            suffix += "_t" if value else "_f"
        elif isinstance(value, int):
            suffix += f"_{value}"
        else:
            suffix += "_" + TYPES[dtype_name(value)][0]
    kernel_name = "custom_kernel_" + name + suffix

    params: list[Param] = []
    text = CUDA_DEFAULT_HEADER + header
    text += "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n"
    text += f"__global__ void {kernel_name}(\n"
    for i, arg in enumerate(inputs):
        ctype = _buffer(f"const {TYPES[arg.dtype][1]}", checked)
        text += f"    {ctype} {arg.name},\n"
        params.append(Param("input", arg.name, ctype, i))
        if arg.ndim > 0:
            has_shape, has_strides, has_ndim = shape_infos[i]
            if has_shape:
                text += f"    const __grid_constant__ Shape {arg.name}_shape,\n"
                params.append(Param("shape", arg.name, "Shape", i))
            if has_strides:
                text += f"    const __grid_constant__ Strides {arg.name}_strides,\n"
                params.append(Param("strides", arg.name, "Strides", i))
            if has_ndim:
                text += f"    const __grid_constant__ int {arg.name}_ndim,\n"
                params.append(Param("ndim", arg.name, "int", i))
    for i, (out, dtype) in enumerate(zip(output_names, output_dtypes)):
        ctype = _buffer(TYPES[dtype_name(dtype)][1], checked)
        text += f"    {ctype} {out}"
        params.append(Param("output", out, ctype, i))
        text += ",\n" if i < len(output_names) - 1 else ") {\n"
    if template:
        for n, value in template:
            if isinstance(value, bool):
                text += f"  constexpr bool {n} = {_template_value(value, 'cuda')};\n"
            elif isinstance(value, int):
                text += f"  constexpr int {n} = {value};\n"
            else:
                text += f"  using {n} = {_template_value(value, 'cuda')};\n"
        text += "\n"
    text += source + "\n}\n\n} // namespace mlx::core::cu\n"
    return Wrapped("cuda", kernel_name, text, tuple(params), template)


def wrap(dialect, name, input_names, output_names, source, header, inputs, output_dtypes,
         template=(), checked=False) -> Wrapped:
    make = metal if dialect == "metal" else cuda
    return make(name, input_names, output_names, source, header, inputs, output_dtypes,
                template, checked)

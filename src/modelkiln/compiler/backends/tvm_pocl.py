"""Run TVM's OpenCL kernels for a model on PoCL (an OpenCL on the CPU), operator by operator.

The PyPI TVM has no OpenCL runtime, so a Mali artifact cannot run here as a whole. Its kernels can: each
operator's scheduled TIR (the same schedules the artifact holds) is built for the same OpenCL target, and
Kiln launches the kernels with pyopencl in the model's order, with the grid and work-group sizes the TIR's
thread bindings say. What this does not exercise is the artifact's host code and TVM's runtime.
"""
from __future__ import annotations

import re

import numpy as np
import onnx

from modelkiln.compiler.canonical import canonicalize
from modelkiln.targets import Target

KERNEL = re.compile(r"__kernel void (\w+)\(([^)]*)\)")


def run_on_pocl(model: onnx.ModelProto, target: Target, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], str] | str:
    """(outputs, where they ran), or why the kernels could not be run here."""
    try:
        import pyopencl as cl

        device = next(d for p in cl.get_platforms() for d in p.get_devices())
    except Exception:  # no pyopencl, or no OpenCL platform
        return "no OpenCL platform here (pip install pyopencl pocl-binary-distribution)"
    from tvm import relax

    from .tvm import scheduled_module

    mod, tvm_target = scheduled_module(canonicalize(model).model, target)  # the kernels compile() built
    main = mod["main"]
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    values: dict = dict(zip(main.params, inputs))
    programs: dict = {}
    for block in main.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or getattr(call.op, "name", "") != "relax.call_tir":
                return f"the model has a step that is not a TIR kernel ({binding.var.name_hint})"
            function = call.args[0]
            if function.name_hint not in programs:
                programs[function.name_hint] = _build(cl, context, mod[function], tvm_target)
            built = programs[function.name_hint]
            if isinstance(built, str):
                return built
            args = [values[a] if isinstance(a, relax.Var) else a.value.numpy() for a in call.args[1].fields]
            out_type = binding.var.ty
            out = np.zeros([int(d) for d in out_type.shape], dtype=str(out_type.dtype))
            _launch(cl, context, queue, built, [*args, out])
            values[binding.var] = out
    result = main.body.body
    outputs = [values[v] for v in (result.fields if isinstance(result, relax.Tuple) else [result])]
    return outputs, f"PoCL ({device.version.strip()}), operator by operator"


def _build(cl, context, function, tvm_target):
    """(kernel, its buffer arguments by parameter index, global size, local size) for one scheduled operator."""
    import tvm

    executable = tvm.compile(tvm.IRModule({"main": function.with_attr("global_symbol", "main")}), target=tvm_target)
    source = executable.mod.imports[0].inspect_source()
    kernels = list(dict.fromkeys(KERNEL.findall(source)))  # TVM repeats the prototypes before the bodies
    if len(kernels) != 1:
        return f"an operator builds to {len(kernels)} OpenCL kernels; Kiln launches single-kernel operators only"
    name, signature = kernels[0]
    params = {p.name: i for i, p in enumerate(function.params)}
    names = [arg.split()[-1].lstrip("*").removesuffix("_ptr") for arg in signature.split(",")]
    if any(n not in params for n in names):
        return f"kernel {name} takes arguments other than its operator's tensors ({signature})"
    dims = _thread_extents(function)
    local = tuple(dims.get(f"threadIdx.{axis}", 1) for axis in "xyz")
    global_ = tuple(dims.get(f"blockIdx.{axis}", 1) * size for axis, size in zip("xyz", local))
    kernel = cl.Kernel(cl.Program(context, source).build(), name)
    return kernel, [params[n] for n in names], global_, local


def _thread_extents(function) -> dict[str, int]:
    """The launch extents of each thread axis (blockIdx.x, threadIdx.y, ...) bound in the scheduled TIR."""
    import tvm
    from tvm_ffi.structural import structural_map

    extents: dict[str, int] = {}

    def visit(loop):
        if loop.kind == tvm.tirx.ForKind.THREAD_BINDING:
            tag = loop.thread_binding.thread_tag
            extents[tag] = max(extents.get(tag, 1), int(loop.extent))
        return loop

    structural_map(function, [(tvm.tirx.For, visit)])
    return extents


def _launch(cl, context, queue, built, arrays: list[np.ndarray]) -> None:
    kernel, order, global_, local = built
    flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
    buffers = [cl.Buffer(context, flags, hostbuf=np.ascontiguousarray(a)) for a in arrays]
    kernel(queue, global_, local, *(buffers[i] for i in order))
    cl.enqueue_copy(queue, arrays[-1], buffers[-1])  # the operator's output is its last parameter
    queue.finish()

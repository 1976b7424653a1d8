"""TVM backend: ONNX -> Relax (TVM's ONNX importer) -> a shared library for the board's CPU holding GPU code IREE
cannot make: PTX for old NVIDIA GPUs (sm_37, sm_53; LLVM's NVPTX backend inside TVM, no nvcc) or OpenCL C for
ARM Mali. It also builds plain CPU code, which Kiln uses for the x86-64 "host twin" of a GPU build.

TVM is given Kiln's canonical ONNX (compiler/canonical.py): its kernels need static shapes, which the shape
subgraphs of torch exports (YOLOv8's head) only have once folded.

Measured with apache-tvm 0.27.0.post1:
- GPU kernels need schedules (dlight default GPU rules), else TVM leaves them unbound to threads.
- The `nvptx` target kind takes no mattr; LLVM then writes the lowest PTX ISA the SM allows (4.1 for sm_37,
  4.2 for sm_53), which every CUDA since 7.0 loads. Math calls link libdevice, taken from the pinned
  nvidia-cuda-nvcc-cu12 wheel (TVM only looks for a CUDA toolkit).
- TVM 0.27 calls llvm.nvvm.barrier.cta.sync.aligned.all without its i32 operand (LLVM 21+ changed it); the LLVM
  verifier rejects every kernel with a __syncthreads. We rewrite those syncs before NVPTX codegen.
- The device code sits in the exported .so as plain text (uint64 length, then the PTX / OpenCL C), so
  static_check reads it from compiled.so: no side files ship.
"""
from __future__ import annotations

import json
import re
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from modelkiln.compiler.canonical import COMMAND as CANONICAL_COMMAND, canonicalize, runtime_shaped_nodes
from modelkiln.compiler.emulation import device_in_child
from modelkiln.compiler.gpu_code import PTX_HEADER, check_opencl, check_ptx, embedded_text, nvcc_file
from modelkiln.errors import CompilationError
from modelkiln.targets import CompilerOptions, Gpu, Target

from .base import BackendOutput

if TYPE_CHECKING:
    from modelkiln.compiler.calibration import PrecisionData

FILE = "compiled.so"
TVM_PIN = "apache-tvm==0.27.0.post1"
OPENCL_HEADER = b"// Function: "
LINKERS = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc", "armv7": "arm-linux-gnueabihf-gcc"}
DEVICES = {"cuda": "cuda", "opencl": "opencl"}
SCHEDULES = "dlight.ApplyDefaultSchedule(gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback())"


class TvmBackend:
    name = "tvm"
    portable = False
    forms = ("onnx",)
    emulated_in_python = False

    def version(self) -> str:
        return version("apache-tvm")

    def runtime_requirement(self) -> str:
        return TVM_PIN

    def unsupported_reason(self, target: Target, options: CompilerOptions) -> str | None:
        # The catalog sends TVM only what IREE cannot build (CUDA below sm_60, OpenCL); a cuda-ver too old for
        # the GPU is refused there. LLVM writes the lowest PTX ISA the GPU allows, so cuda-ver needs no flag.
        if options.precision != "float32":
            return f"the TVM backend builds float32 only, not {options.precision}"
        if target.arch not in LINKERS:
            return f"the TVM backend has no linker for {target.arch}"
        if target.gpu is not None and target.gpu.api not in DEVICES:
            return f"the TVM backend does not build for {target.gpu.api}"
        return None

    def gpu_device(self, api: str) -> str | None:
        return device_in_child("run_tvm", DEVICES[api])

    def static_check(self, workdir: Path, output: BackendOutput, target: Target) -> str:
        return static_check(workdir, output, target)

    def run_kernels(self, model: onnx.ModelProto, target: Target, inputs: list) -> tuple[list, str] | str:
        if target.gpu is None or target.gpu.api != "opencl":
            return "TVM's CUDA kernels need a CUDA device"
        from .tvm_pocl import run_on_pocl

        return run_on_pocl(model, target, inputs)

    def compile(self, model: onnx.ModelProto, target: Target, options: CompilerOptions, workdir: Path,
                data: PrecisionData | None = None) -> BackendOutput:
        import tvm
        from tvm.support.cc import cross_compiler

        gpu = target.gpu
        canonical = canonicalize(model)
        try:
            mod, tvm_target = scheduled_module(canonical.model, target)
            executable = tvm.compile(mod, target=tvm_target)
        except CompilationError:
            raise
        except Exception as exc:  # TVM raises its own error classes (ValueError, InternalError, ...)
            raise build_error(exc, canonical.model, target) from None
        linker = LINKERS[target.arch]
        if shutil.which(linker) is None:
            raise CompilationError("compile", f"the linker {linker} is not installed",
                                   f"install {linker} (Debian: gcc-{target.triple.replace('armv7a', 'arm')}).")
        out = workdir / FILE
        try:
            executable.export_library(str(out), fcompile=cross_compiler(linker))
        except Exception as exc:
            raise CompilationError("compile", f"linking the TVM library with {linker} failed: {_first_line(exc)}",
                                   "report this with the model.") from None
        host = json.dumps(_host_config(target), separators=(",", ":"))
        runtime = "==" + ".".join(version("apache-tvm").split(".")[:2]) + ".*"  # same major.minor as the compiler
        device = json.dumps(_device_config(gpu), separators=(",", ":")) if gpu else None
        command = (f"{CANONICAL_COMMAND}; mod = tvm.relax.frontend.onnx.from_onnx(model, keep_params_in_input=False); "
                   + (f"with target: mod = {SCHEDULES}(relax.transform.LegalizeOps()(mod)); " if gpu else "")
                   + (f"ex = tvm.compile(mod, target=tvm.target.Target({device}, host={host})); " if gpu
                      else f"ex = tvm.compile(mod, target=tvm.target.Target({host})); ")
                   + f"ex.export_library('{FILE}', fcompile=tvm.support.cc.cross_compiler('{linker}'))")
        return BackendOutput(
            files=[FILE], entry={"Entry": "main", "Device": DEVICES[gpu.api] if gpu else "cpu"},
            command=command, host_independent=False, runtime={"apache-tvm": runtime},
            notes=[canonical.note(), *notes(target), f"the device needs apache-tvm{runtime} (a build with the "
                   "device's CUDA/OpenCL where it has one): the library calls the TVM runtime's ABI, which changes "
                   "between minor releases"],
        )


def scheduled_module(model: onnx.ModelProto, target: Target):
    """(Relax IRModule, tvm Target) of a canonical model (canonical.canonicalize): for a GPU, operators legalized to
    TIR and given TVM's default GPU schedules."""
    from tvm import relax

    mod = import_onnx(model)
    tvm_target = make_target(target)
    if target.gpu is not None:
        if target.gpu.api == "cuda":
            _install_nvptx_hooks()
        dlight = _dlight()
        with tvm_target:
            mod = relax.transform.LegalizeOps()(mod)
            mod = dlight.ApplyDefaultSchedule(dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                                              dlight.gpu.GeneralReduction(), dlight.gpu.Fallback())(mod)
    return mod, tvm_target


def import_onnx(model: onnx.ModelProto):
    """The model as a Relax IRModule with its weights embedded; CompilationError naming an operator TVM refuses."""
    from tvm.relax.frontend.onnx import from_onnx

    unsupported = unsupported_ops(model)
    if unsupported:
        raise CompilationError(
            "compile", "TVM's ONNX importer does not support " + ", ".join(unsupported) + ".",
            "pin another backend with CompilerOptions {\"kiln-backend\": \"onnxruntime\"}, "
            "or replace that operator in the model.")
    try:
        return from_onnx(model, keep_params_in_input=False)
    except Exception as exc:
        text = _first_line(exc)
        ops = sorted({n.op_type for n in model.graph.node if re.search(rf"\b{re.escape(n.op_type)}\b", str(exc))})
        where = f"ONNX operator {ops[0]!r}" if len(ops) == 1 else "the model"
        raise CompilationError("compile", f"TVM's ONNX importer cannot convert {where}: {text}",
                               "pin another backend with CompilerOptions {\"kiln-backend\": ...}, "
                               "or replace that operator in the model.") from None


def build_error(exc: Exception, model: onnx.ModelProto, target: Target) -> CompilationError:
    """The CompilationError for a TVM failure: it names the operator whose shape is only known at run time, when
    the canonical model still has one (TVM's kernels need static shapes: "emit_te ... ShapeExpr shape")."""
    dynamic = runtime_shaped_nodes(model)
    if dynamic:
        return CompilationError(
            "compile", f"TVM failed to build for {_describe(target)}: it needs static shapes, and "
            f"{dynamic[0].describe()}" + (f" (and {len(dynamic) - 1} more such node(s))" if len(dynamic) > 1 else "")
            + f"; TVM said: {_first_line(exc)}",
            "make that operator's output shape follow from the input shapes alone (Kiln folds those): export "
            "without dynamic_axes, leave data-dependent post-processing (NonZero, NMS) out of the model, or pin "
            "another backend with CompilerOptions {\"kiln-backend\": ...}.")
    return CompilationError("compile", f"TVM failed to build for {_describe(target)}: {_first_line(exc)}",
                            "pin another backend with CompilerOptions {\"kiln-backend\": ...}, "
                            "or report this with the model.")


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """ONNX operators (with a node name) that TVM's importer has no converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"If", "Constant"}
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in known and node.op_type not in found:
            found[node.op_type] = node.name or (node.output[0] if node.output else "?")
    return [f"ONNX operator {op!r} (node {name!r})" for op, name in found.items()]


def make_target(target: Target):
    """The tvm.target.Target: the GPU (with the board's CPU as host) or the CPU alone."""
    import tvm

    host = _host_config(target)
    if target.gpu is None:
        return tvm.target.Target(host)
    return tvm.target.Target(_device_config(target.gpu), host=host)


def _host_config(target: Target) -> dict:
    from tvm.target.codegen import llvm_is_valid_cpu

    config: dict = {"kind": "llvm", "mtriple": target.triple}
    mcpu = target.mcpu
    if mcpu and mcpu != "generic":
        if not llvm_is_valid_cpu(mcpu, target.triple):  # TVM would only log this and fall back to generic
            raise CompilationError("compile", f"LLVM in TVM does not know the CPU {mcpu!r} for {target.triple}",
                                   "set CompilerOptions mcpu to a CPU LLVM knows.")
        config["mcpu"] = mcpu
    if target.mattr:
        config["mattr"] = list(target.mattr)
    if target.arch == "armv7":
        config["mfloat-abi"] = "hard"  # gnueabihf: soft-float calls do not link against the board's libs
    return config


def _device_config(gpu: Gpu) -> dict:
    if gpu.api == "cuda":
        return {"kind": "nvptx", "mcpu": gpu.code, "mtriple": "nvptx64-nvidia-cuda"}
    # Mali Midgard/Bifrost: at most 256 work-items per group, no warps (TVM's "mali" device key).
    return {"kind": "opencl", "device": "mali", "max_num_threads": 256}


def notes(target: Target) -> list[str]:
    gpu = target.gpu
    if gpu is None:
        return ["TVM default CPU schedules; not tuned."]
    if gpu.api == "cuda":
        return ["TVM default GPU schedules (dlight); not tuned.",
                f"CUDA: compiled.so holds host code for {target.arch} and PTX for {gpu.code} (LLVM NVPTX, lowest "
                "ISA that SM allows), JIT-compiled by the NVIDIA driver at load; no nvcc or NVRTC needed on the "
                "device. Run it with an apache-tvm runtime built with CUDA."]
    return ["TVM default GPU schedules (dlight); not tuned.",
            f"OpenCL: compiled.so holds host code for {target.arch} and OpenCL C kernels for {gpu.code}, built by "
            "the board's OpenCL driver at load. Run it with a TVM runtime built with OpenCL (the PyPI wheel is not)."]


def _dlight():
    try:
        from tvm.s_tir import dlight
    except ImportError:  # older TVM layouts
        from tvm import dlight  # type: ignore[no-redef]
    return dlight


_HOOKS_INSTALLED = False


def _install_nvptx_hooks() -> None:
    """Point TVM at libdevice from the nvidia-cuda-nvcc-cu12 wheel, and fix TVM 0.27's barrier call for LLVM 21+."""
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    import tvm
    import tvm_ffi
    from tvm import tirx
    from tvm_ffi.structural import structural_map

    libdevice = nvcc_file("nvvm/libdevice/libdevice.10.bc")  # architecture-independent bitcode
    if libdevice is not None:
        tvm_ffi.register_global_func("tvm_callback_libdevice_path", lambda arch: libdevice, override=True)

    original = tvm.get_global_func("target.build.nvptx")
    sync = tvm.ir.Op.get("tirx.tvm_storage_sync")
    new_barrier = tvm.target.codegen.llvm_version_major() >= 21

    def fix_sync(stmt):
        call = stmt.value
        if (type(call).__name__ == "Call" and call.op.same_as(sync)
                and str(getattr(call.args[0], "value", call.args[0])) in ("shared", "shared.dyn")):
            return tirx.Evaluate(tirx.call_llvm_intrin(
                "void", "llvm.nvvm.barrier.cta.sync.aligned.all", tirx.const(0, "int32")))
        return stmt

    def build_nvptx(mod, target):
        if new_barrier:
            mod = structural_map(mod, [(tirx.Evaluate, fix_sync)])
        try:
            return original(mod, target)
        except Exception as exc:
            if "libdevice" in str(exc) or "CUDA path" in str(exc) or "nvidia-cuda-toolkit" in str(exc):
                raise CompilationError("compile", "TVM needs CUDA's libdevice to build PTX and found none",
                                       "pip install nvidia-cuda-nvcc-cu12==12.9.86") from None
            raise

    tvm_ffi.register_global_func("target.build.nvptx", build_nvptx, override=True)
    _HOOKS_INSTALLED = True


# ---------------------------------------------------------------------------------------------- static check

def static_check(workdir: Path, output: BackendOutput, target: Target) -> str:
    """Check the GPU code in compiled.so without a GPU: the PTX (ptxas) or the OpenCL C (PoCL)."""
    assert target.gpu is not None
    module = (workdir / output.files[0]).read_bytes()
    if target.gpu.api == "cuda":
        ptx = extract_ptx(module)
        if ptx is None:
            raise CompilationError("verify", "compiled.so holds no PTX", "report this with the model.")
        return check_ptx(ptx, target.gpu, workdir)
    source = extract_opencl(module)
    if source is None:
        raise CompilationError("verify", "compiled.so holds no OpenCL source", "report this with the model.")
    return check_opencl(split_opencl(source), target.gpu)


def extract_ptx(module: bytes) -> str | None:
    return embedded_text(module, PTX_HEADER, 8)  # TVM's library blob: uint64 length, then the text


def extract_opencl(module: bytes) -> str | None:
    return embedded_text(module, OPENCL_HEADER, 8)


def split_opencl(source: str) -> dict[str, str]:
    """TVM's OpenCL module: one program per kernel, each after a '// Function: name' line."""
    kernels = {}
    for chunk in source.split("// Function: ")[1:]:
        name, _, body = chunk.partition("\n")
        kernels[name.strip()] = body
    return kernels or {"(all)": source}


def _describe(target: Target) -> str:
    gpu = target.gpu
    return f"{gpu.code} ({gpu.api}) with a {target.arch} host" if gpu else target.arch


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in lines:  # TVM's errors put the message after a traceback
        if re.match(r"^(\w+Error|Check failed|error)", line):
            return line[:400]
    return (lines[-1] if lines else type(exc).__name__)[:400]

"""IREE backend: ONNX -> MLIR (iree-import-onnx) -> a self-contained .vmfb for the target CPU or GPU.

IREE is given Kiln's canonical ONNX (compiler/canonical.py: opset 17, BatchNormalization folded, shapes static),
its graph renamed to an identifier, since iree-import-onnx names the entry function after the graph verbatim.

Flags that matter here (measured, REFERENCE.md section 6): NCHW convolutions are converted to channels-last
(4-5x faster on CPU); ARM needs explicit CPU features; armv7 needs debug symbols off. GPU modules hold PTX
(CUDA, sm_60 and newer) or SPIR-V (Vulkan) plus VM bytecode: the host side does not depend on the CPU.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from modelkiln.compiler.canonical import COMMAND as CANONICAL_COMMAND, canonicalize
from modelkiln.compiler.emulation import device_in_child
from modelkiln.compiler.gpu_code import PTX_HEADER, check_ptx, embedded_text
from modelkiln.errors import CompilationError
from modelkiln.targets import Gpu
from modelkiln.targets import CompilerOptions, Target

from .base import BackendOutput

if TYPE_CHECKING:
    from modelkiln.compiler.calibration import PrecisionData

FILE = "compiled.vmfb"
CHANNELS_LAST = "builtin.module(util.func(iree-preprocessing-convert-conv-to-channels-last))"
TIMEOUT_S = 1800
CUDA_MIN_SM = 60  # IREE's NVPTX target knows sm_60 and newer (sm_53 "is not a known target")
DEVICES = {"cuda": "cuda", "vulkan": "vulkan"}  # Kiln GPU api -> IREE HAL driver
# What IREE's bf16/f16 demotion reaches (--iree-global-opt-demote-contraction-inputs-operations=all): named matmul
# ops. A convolution reaches the pass already rewritten as a generic op, so it stays fp32 (measured with iree-compile
# 3.13 at --compile-to=global-optimization: no truncf for a 3x3 Conv at batch 1 or 4 nor a 1x1 Conv, with or without
# the channels-last rewrite; one for a Gemm and a 3-D MatMul). Counted on the ONNX graph, so the note says what ran.
DEMOTED_OPS = ("MatMul", "Gemm")
CONVOLUTIONS = ("Conv", "ConvTranspose")


class IreeBackend:
    name = "iree"
    portable = False
    forms = ("onnx",)
    emulated_in_python = False

    def version(self) -> str:
        return version("iree-base-compiler")

    def runtime_requirement(self) -> str:
        return f"iree-base-runtime=={version('iree-base-runtime')}"

    def unsupported_reason(self, target: Target, options: CompilerOptions) -> str | None:
        if options.precision == "int8":
            return "IREE does not quantize models: int8 is onnxruntime's and OpenVINO's"
        if target.gpu and target.gpu.api == "opencl":
            return "IREE has no OpenCL target"
        if target.gpu and target.gpu.api == "cuda" and target.gpu.sm < CUDA_MIN_SM:
            return f"IREE's CUDA target starts at sm_{CUDA_MIN_SM}; {target.gpu.code} needs another backend"
        return None

    def gpu_device(self, api: str) -> str | None:
        return device_in_child("run_iree", DEVICES[api])

    def static_check(self, workdir: Path, output: BackendOutput, target: Target) -> str:
        return static_check(workdir, output, target)

    def run_kernels(self, model: onnx.ModelProto, target: Target, inputs: list) -> tuple[list, str] | str:
        return f"IREE's {target.gpu.api if target.gpu else 'GPU'} kernels need a device of that API"

    def compile(self, model: onnx.ModelProto, target: Target, options: CompilerOptions, workdir: Path,
                data: PrecisionData | None = None) -> BackendOutput:
        source, mlir, out = workdir / "source.onnx", workdir / "source.mlir", workdir / FILE
        canonical = canonicalize(model)
        model = with_entry_name(canonical.model)
        demotion = precision_note(model, options.precision)
        onnx.save(model, str(source))
        link: list[str] = []
        try:
            _run([sys.executable, "-m", "iree.compiler.tools.import_onnx", str(source), "-o", str(mlir)],
                 "importing the ONNX model into IREE", mlir)
            flags = compile_flags(target, options)
            link = armv7_libm_linker(target, workdir) if target.arch == "armv7" and not target.gpu else []
            _run([_tool("iree-compile"), str(mlir), *flags, *link, "-o", str(out)], "compiling with IREE", mlir)
        except CompilationError as exc:
            culprit = find_unconvertible_node(model, workdir)
            if culprit:
                raise CompilationError(
                    "compile", f"IREE cannot convert {culprit}.",
                    "pin another backend with CompilerOptions {\"kiln-backend\": \"onnxruntime\"}, "
                    "or replace that operator in the model.",
                ) from None
            raise exc
        finally:
            source.unlink(missing_ok=True)
            mlir.unlink(missing_ok=True)
        notes = [canonical.note()]
        runtime = f"=={version('iree-base-runtime')}"  # the very runtime Kiln verified the module with
        if link:
            notes.append("ARMv7 has no fmaxf/fminf instruction and IREE's embedded loader no libm: Kiln links its own "
                         "fmaxf/fminf (C99 semantics) into the module through --iree-llvmcpu-embedded-linker-path.")
        if demotion:
            notes.append(demotion)
        return BackendOutput(
            files=[FILE], entry={"Entry": model.graph.name, "Device": DEVICES[target.gpu.api] if target.gpu else "local"},
            command=f"{CANONICAL_COMMAND} && iree-import-onnx model.onnx -o model.mlir && iree-compile model.mlir "
            + " ".join(shlex.quote(f) for f in flags) + f" -o {FILE}",
            notes=notes + gpu_notes(target.gpu) + [f"the device needs iree-base-runtime{runtime}: IREE's module format "
                                                   "is not stable across releases"],
            host_independent=target.gpu is not None, runtime={"iree-base-runtime": runtime},
        )


def compile_flags(target: Target, options: CompilerOptions) -> list[str]:
    """iree-compile flags for the target's CPU, or its GPU."""
    if target.gpu:
        return gpu_flags(target.gpu) + _precision_flags(options)
    flags = [
        "--iree-hal-target-device=local",
        "--iree-hal-local-target-device-backends=llvm-cpu",
        f"--iree-llvmcpu-target-triple={target.triple}",
        f"--iree-llvmcpu-target-cpu={target.mcpu}",
        f"--iree-preprocessing-pass-pipeline={CHANNELS_LAST}",
    ]
    if target.mattr:
        flags.append("--iree-llvmcpu-target-cpu-features=" + ",".join(target.mattr))
    if target.arch == "armv7":
        flags.append("--iree-llvmcpu-debug-symbols=false")  # else: "imports are not supported" at load
    return flags + _precision_flags(options)


def gpu_flags(gpu: Gpu) -> list[str]:
    if gpu.api == "cuda":
        flags = ["--iree-hal-target-device=cuda", f"--iree-cuda-target={gpu.code}"]
        if gpu.ptx_isa:  # the PTX ISA the user's CUDA (cuda-ver) loads; IREE's default is newer
            flags.append("--iree-cuda-target-features=+ptx" + gpu.ptx_isa.replace(".", ""))
        return flags
    return ["--iree-hal-target-device=vulkan", f"--iree-vulkan-target={gpu.code}"]


def gpu_notes(gpu: Gpu | None) -> list[str]:
    if gpu is None:
        return []
    if gpu.api == "cuda":
        return [f"CUDA: the .vmfb holds PTX for {gpu.code} (JIT-compiled by the NVIDIA driver when loaded, so it "
                "also runs on newer GPUs) and VM bytecode for the host, which any IREE runtime with the CUDA driver "
                "runs on any CPU. TensorRT is not used."]
    return [f"Vulkan: the .vmfb holds SPIR-V for IREE's {gpu.code} profile (Vulkan 1.1, no subgroup-size "
            "assumptions) and VM bytecode for the host; run it with an IREE runtime built with its Vulkan driver."]


def precision_note(model: onnx.ModelProto, precision: str) -> str:
    """What IREE computes in precision (see DEMOTED_OPS); a CompilationError when that is nothing, as the candidate
    would be the float32 one under another name."""
    if precision == "float32":
        return ""
    ops = [n.op_type for n in model.graph.node]
    demoted, convs = sum(op in DEMOTED_OPS for op in ops), sum(op in CONVOLUTIONS for op in ops)
    kept = f"; its {convs} convolution(s) stay fp32, as IREE {version('iree-base-compiler')} demotes no convolution" if convs else ""
    if not demoted:
        raise CompilationError("compile", f"IREE would compute nothing of this model in {precision}: it demotes the "
                               f"inputs of matmuls (MatMul, Gemm) only, and the model has none{kept}.",
                               f"for {precision} convolutions use OpenVINO on a CPU with {precision} instructions "
                               f"(kiln-backend openvino), or ask for kiln-precision auto.")
    return (f"IREE demotes the inputs of the model's {demoted} MatMul/Gemm operator(s) to {precision}, accumulating "
            f"in fp32; other operators stay fp32{kept}.")


def _precision_flags(options: CompilerOptions) -> list[str]:
    if options.precision == "float32":
        return []
    short = {"float16": "f16", "bfloat16": "bf16"}[options.precision]
    return [f"--iree-global-opt-demote-contraction-inputs-type={short}",
            "--iree-global-opt-demote-contraction-inputs-operations=all"]


def static_check(workdir: Path, output: BackendOutput, target: Target) -> str:
    """Check a module's GPU code without a GPU (PTX: see gpu_code.check_ptx). Returns what was checked."""
    assert target.gpu is not None
    if target.gpu.api != "cuda":
        return "SPIR-V was not checked without a Vulkan device"
    ptx = extract_ptx((workdir / output.files[0]).read_bytes())
    if ptx is None:
        raise CompilationError("verify", "the CUDA module holds no PTX", "report this with the model.")
    return check_ptx(ptx, target.gpu, workdir)


def extract_ptx(module: bytes) -> str | None:
    """The PTX text IREE embeds in a .vmfb (a flatbuffer string: uint32 length, then the text)."""
    return embedded_text(module, PTX_HEADER, 4)


# ARMv7 has no instruction for fmaxf/fminf (IEEE maxNum: ARMv8's VMAXNM), so LLVM calls libm for every max/min
# (ReLU, Clip, MaxPool), and IREE's embedded ELF loader has no libm ("undefined symbol: fmaxf"). Kiln links
# these into the module itself; hidden visibility keeps the calls direct (no dynamic imports).
ARMV7_LIBM_C = r"""
#define KILN_LOCAL __attribute__((visibility("hidden")))
KILN_LOCAL float fmaxf(float a, float b) { return a != a ? b : (b != b ? a : (a > b ? a : b)); }
KILN_LOCAL float fminf(float a, float b) { return a != a ? b : (b != b ? a : (a < b ? a : b)); }
"""
ARMV7_GCC = "arm-linux-gnueabihf-gcc"


def armv7_libm_linker(target: Target, workdir: Path) -> list[str]:
    """iree-compile flags that link fmaxf/fminf, built for the target's float ABI, into armv7 modules."""
    gcc = shutil.which(ARMV7_GCC)
    if gcc is None:
        raise CompilationError("compile", f"{ARMV7_GCC} is not installed; IREE's armv7 code needs it for fmaxf",
                               "install Debian's gcc-arm-linux-gnueabihf (make system-deps does).")
    source, obj, wrapper = workdir / "kiln_libm.c", workdir / "kiln_libm.o", workdir / "iree-lld-armv7"
    source.write_text(ARMV7_LIBM_C)
    abi = "softfp" if "androideabi" in target.triple else "hard"  # armeabi-v7a passes floats in core registers
    proc = subprocess.run([gcc, "-c", "-O2", "-fPIC", "-ffreestanding", "-fno-builtin", "-march=armv7-a",
                           "-mfpu=neon", f"-mfloat-abi={abi}", str(source), "-o", str(obj)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise CompilationError("compile", f"{ARMV7_GCC} failed on Kiln's fmaxf: {proc.stderr.strip()[:300]}",
                               "report this with the model.")
    # LLVM also calls the ARM EABI helpers for float <-> 64-bit integer conversions (__aeabi_f2lz: Resize, Cast
    # to int64); GCC's libgcc.a has them, hidden and in the base (soft-float) ABI they use on every armv7 ABI.
    libgcc = subprocess.run([gcc, "-print-libgcc-file-name"], capture_output=True, text=True).stdout.strip()
    archive = f' "{libgcc}"' if libgcc and Path(libgcc).is_file() else ""
    # IREE also links host-arch objects (compile-time constant evaluation): add ours to ARM links only
    # (ELF e_machine 40, read from the first object file).
    lld = _tool("iree-lld")
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in *.o) m=$(od -An -tu2 -j18 -N2 "$a" | tr -d " "); break;; esac; done\n'
        f'if [ "$m" = 40 ]; then exec "{lld}" "$@" "{obj}"{archive}; fi\n'
        f'exec "{lld}" "$@"\n')
    wrapper.chmod(0o755)
    return [f"--iree-llvmcpu-embedded-linker-path={wrapper}"]


def with_entry_name(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its graph renamed to a plain identifier: iree-import-onnx names the module's entry function
    after the graph verbatim (`torch-jit-export`, `my model.v1`), and Kiln records that name as the entry."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", model.graph.name or "main_graph")
    model.graph.name = name if name and not name[0].isdigit() else f"_{name}"
    return model


def find_unconvertible_node(model: onnx.ModelProto, workdir: Path) -> str | None:
    """Name the first ONNX node IREE's importer cannot lower, by converting each op type alone.

    IREE reports (or crashes on) such nodes without naming them; this runs only after a failure.
    """
    shapes = {v.name: v for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    consts = {i.name: i for i in model.graph.initializer}
    seen: set[str] = set()
    probe_onnx, probe_mlir = workdir / "probe.onnx", workdir / "probe.mlir"
    for node in model.graph.node:
        if node.op_type in seen or node.op_type == "Constant":
            continue
        seen.add(node.op_type)
        known = [n for n in node.input if n and n in shapes]
        inits = [consts[n] for n in node.input if n in consts]
        if len(known) + len(inits) != len([n for n in node.input if n]) or not all(o in shapes for o in node.output):
            continue  # shapes unknown: cannot probe this node alone
        graph = onnx.helper.make_graph([node], "probe", [shapes[n] for n in known],
                                       [shapes[o] for o in node.output], initializer=inits)
        probe = onnx.helper.make_model(graph, opset_imports=model.opset_import)
        probe.ir_version = model.ir_version
        onnx.save(probe, str(probe_onnx))
        imported = subprocess.run([sys.executable, "-m", "iree.compiler.tools.import_onnx", str(probe_onnx),
                                   "-o", str(probe_mlir)], capture_output=True, text=True, timeout=120)
        if imported.returncode != 0:
            continue
        lowered = subprocess.run(
            [_tool("iree-opt"), str(probe_mlir), "--pass-pipeline=builtin.module(func.func(convert-torch-onnx-to-torch))"],
            capture_output=True, text=True, timeout=120)
        if lowered.returncode != 0 or '"onnx.' in lowered.stdout:
            return f"ONNX operator {node.op_type!r} (node {node.name or node.output[0]!r})"
    return None


def _tool(name: str) -> str:
    from iree.compiler.tools.binaries import find_tool

    return find_tool(name)


def _run(cmd: list[str], what: str, mlir: Path) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CompilationError("compile", f"IREE timed out after {TIMEOUT_S} s while {what}.",
                               "try a smaller model or pin another backend with kiln-backend.") from None
    if proc.returncode != 0:
        raise CompilationError("compile", f"IREE failed while {what}: {explain(proc.stderr, mlir)}",
                               "pin another backend with CompilerOptions {\"kiln-backend\": ...} "
                               "or replace the operator named above.")


def explain(stderr: str, mlir: Path) -> str:
    """Turn IREE's diagnostics into one line naming the ONNX operator (and node) that failed."""
    errors = [line for line in stderr.splitlines() if "error:" in line]
    if not errors:
        return (stderr.strip().splitlines() or ["no diagnostics"])[-1][:400]
    first = errors[0]
    text = first.split("error:", 1)[1].strip()
    op = re.search(r'onnx\.(\w+)', first)
    loc = re.match(r"(.+?):(\d+):\d+:", first)
    if not op and loc and mlir.is_file():
        lines = mlir.read_text(errors="replace").splitlines()
        line_no = int(loc.group(2))
        if 0 < line_no <= len(lines):
            op = re.search(r'"onnx\.(\w+)"', lines[line_no - 1])
    node = re.search(r'loc\("([^"]+)"\)', first)
    where = f"ONNX operator {op.group(1)!r}" if op else "the model"
    if node:
        where += f" (node {node.group(1)!r})"
    return f"{where}: {text}"[:500]

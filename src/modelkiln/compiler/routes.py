"""How a compiled candidate is checked against its source model, one route per kind of check: run natively or
under qemu-user, run on a device of its GPU API, or checked by the proxies that stand in where it cannot run
(a host twin, ptxas, PoCL kernels). Each route returns a Check whose status says which (verify.py).
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelkiln.compiler import emulation
from modelkiln.compiler.accuracy import measure
from modelkiln.compiler.backends import Backend, BackendOutput, GpuBackend
from modelkiln.compiler.calibration import PrecisionData
from modelkiln.compiler.check_inputs import INPUTS_FILE, CheckInputs
from modelkiln.compiler.package import build_meta
from modelkiln.compiler.verify import (
    HOST_TWIN, KILN_ARCH_ELF, OPENCL_TWIN, POCL_TWIN, PTX_TWIN, SAME_FILE, TOLERANCE, Check, compare,
    embedded_elf_arches,
)
from modelkiln.errors import CompilationError
from modelkiln.frontends import ConvertedModel
from modelkiln.runtime.executors import Executor, open_executor
from modelkiln.runtime.model import host_arch
from modelkiln.targets import CompilerOptions, Target, resolve
from modelkiln.targets.options import PRECISIONS

Progress = Callable[[str, str], None]  # (stage, message)


@dataclass
class CheckContext:
    """What every check of one compile shares: the target, the model, its check inputs and the host's role."""

    target: Target
    options: CompilerOptions
    model: ConvertedModel
    inputs: CheckInputs  # the samples every candidate runs on, and the source framework's outputs on them
    native: bool
    progress: Progress
    executors: dict[str, Executor] = dataclasses.field(default_factory=dict)  # verified, on this host
    precision_data: PrecisionData | None = None  # calibration and evaluation samples, for reduced precision


def verify_foreign(ctx: CheckContext, backend: Backend, output: BackendOutput, meta: dict, workdir: Path) -> Check:
    """Check a candidate this host cannot run natively: emulate it, or check what can be checked."""
    if backend.emulated_in_python:  # the target arch's Python runs Kiln's runtime on the artifact
        python = emulation.find_python_emulator(ctx.target.arch, backend.runtime_requirement())
        if isinstance(python, emulation.PythonEmulator):
            return check_samples(ctx, lambda x: emulation.run_runtime(python, workdir, meta, x), python.describe())
        if not backend.portable:  # native code for another CPU: check a build of it for this host
            return _host_twin_check(ctx, backend, workdir / output.files[0], python)
        check = check_samples(ctx, open_executor(workdir, meta).run, f"host ({host_arch()}), same bytes")
        return _not_on_target(check, SAME_FILE,
                              f"{python}; the identical {output.files[0]} ran on this host's {backend.name}")
    emulator = emulation.find_emulator(ctx.target.arch)
    if isinstance(emulator, emulation.Emulator):
        module, entry, count = workdir / output.files[0], meta["Backend"]["Entry"], len(ctx.model.outputs)
        return check_samples(ctx, lambda x: emulation.run_iree(emulator, module, entry, x, count),
                              emulator.describe())
    return _host_twin_check(ctx, backend, workdir / output.files[0], emulator)


def verify_gpu(ctx: CheckContext, backend: GpuBackend, output: BackendOutput, meta: dict, workdir: Path) -> Check:
    """Run GPU code on a device of its API when this machine has one (Mesa's lavapipe runs Vulkan on the
    CPU); else check its device code statically and run a host twin."""
    gpu = ctx.target.gpu
    assert gpu is not None
    device = backend.gpu_device(gpu.api)
    if device:
        check = check_samples(ctx, lambda x: emulation.run_isolated(workdir, meta, x), f"{gpu.api} device: {device}")
        others = [c for c in gpu.codes if c != gpu.code]
        if check.status == "mismatch" and not check.detail and others:
            check.detail = (f"max rel err {check.max_rel_err:.2e} > tolerance {check.tolerance:.0e} on {device} with "
                            f"the {gpu.code} code; another GPU code may compute it right: CompilerOptions gpu-code "
                            + " or ".join(repr(c) for c in others))
        return check
    try:
        static = backend.static_check(workdir, output, ctx.target)
    except CompilationError as exc:
        return Check("mismatch", "static check", TOLERANCE[ctx.options.precision], detail=exc.message)
    check = _twin_check(ctx, backend)
    if check.status != "verified":
        return check
    kernels = _kernel_check(ctx, backend)
    if kernels.status == "mismatch":
        return kernels
    status = PTX_TWIN if gpu.api == "cuda" else POCL_TWIN if kernels.ran else OPENCL_TWIN
    return dataclasses.replace(
        check, status=status,
        detail=f"no {gpu.api} device on this machine; checked instead: the same model compiled by {backend.name} "
        f"for this host's CPU ran within tolerance; the device code: {static}; " + (
            f"its kernels ran on {kernels.ran_on}, and matched (max rel err {kernels.max_rel_err:.1e})"
            if kernels.ran else f"its kernels were not run ({kernels.detail})"))


def _kernel_check(ctx: CheckContext, backend: GpuBackend) -> Check:
    """The GPU kernels run on a stand-in device (TVM's OpenCL kernels on PoCL), compared with the framework."""
    tolerance = TOLERANCE[ctx.options.precision]
    try:
        ran = backend.run_kernels(model_form(backend, ctx.model), ctx.target, ordered(ctx, ctx.inputs.samples[0]))
    except Exception as exc:  # a stand-in that cannot take this model is a gap in the check, not a failure
        return Check("error", "kernels", tolerance, detail=brief(exc))
    if isinstance(ran, str):
        return Check("error", "kernels", tolerance, detail=ran)
    check = compare(ran[0], ctx.inputs.expected[0], tolerance, ran[1], _quantization(ctx))
    if check.status == "mismatch" and not check.detail:
        check.detail = (f"the {ctx.target.gpu.code} kernels computed outputs {check.max_rel_err:.2e} from the "
                        f"framework's (tolerance {tolerance:.0e}) on {ran[1]}")
    return check


def _twin_check(ctx: CheckContext, backend: Backend) -> Check:
    """Compile the same input for this host's CPU with the same backend and options, and run that build."""
    twin = resolve(dataclasses.replace(ctx.options, mcpu="x86-64", mattr=(), recorded={}),
                   platform_={"Os": "LINUX", "Arch": "X86_64"})
    with tempfile.TemporaryDirectory(prefix="kiln-twin-") as tmp:
        out = backend.compile(model_form(backend, ctx.model), twin, ctx.options, Path(tmp))
        meta = build_meta(twin, ctx.model, backend, out, ctx.options)
        return check_samples(ctx, open_executor(Path(tmp), meta).run, f"host twin ({host_arch()})")


def _host_twin_check(ctx: CheckContext, backend: Backend, module: Path, why_not: str) -> Check:
    """For CPU code no runtime here can execute: check a host twin instead, and that the target's module
    holds kernels for the target's CPU. The target's module itself is not run."""
    check = _twin_check(ctx, backend)
    machine, elf_class = KILN_ARCH_ELF[ctx.target.arch]
    kernels = embedded_elf_arches(module.read_bytes())
    if kernels != {(machine, elf_class)}:
        return Check("mismatch", "static check", check.tolerance,
                     detail=f"the module's kernels are {sorted(kernels)}, expected only {machine} ELF{32 * elf_class}")
    return _not_on_target(
        check, HOST_TWIN, f"{why_not}; instead the same model was compiled by {backend.name} with the same options "
        f"for {host_arch()} and that build ran here, and the {ctx.target.arch} module's kernels were "
        f"checked to be {machine} ELF{32 * elf_class} code",
    )


def _not_on_target(check: Check, status: str, instead: str) -> Check:
    """A check that ran something other than the artifact on its target: status says what, detail why."""
    if not check.ran:
        return check
    return dataclasses.replace(check, status=status, detail=f"checked instead: {instead}")


def model_form(backend: Backend, model: ConvertedModel):
    """The model in the form backend compiles: the Treelite model or the ONNX graph."""
    return model.tree_model if "treelite" in backend.forms else model.onnx_model


def ordered(ctx: CheckContext, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [feeds[i.name] for i in ctx.model.inputs]


def _quantization(ctx: CheckContext) -> list:
    """Each output's quantization (int8 models), which sets its tolerance in quantization steps."""
    return [o.quantization for o in ctx.model.outputs]


def check_samples(ctx: CheckContext, run: Callable[[list[np.ndarray]], list[np.ndarray]], ran_on: str) -> Check:
    """Run every check sample through run and compare it with the source's outputs: the first sample that
    does not match, else the check with the largest error."""
    worst: Check | None = None
    for index, (feeds, expected) in enumerate(zip(ctx.inputs.samples, ctx.inputs.expected)):
        check = compare(run(ordered(ctx, feeds)), expected, TOLERANCE[ctx.options.precision], ran_on,
                        _quantization(ctx))
        if not check.ran:
            if index:
                check.detail = (check.detail or f"max rel err {check.max_rel_err:.2e} > tolerance "
                                f"{check.tolerance:.0e}") + f" on sample {index - 1} of {INPUTS_FILE}"
            return check
        if worst is None or (check.max_rel_err or 0.0) > (worst.max_rel_err or 0.0):
            worst = check
    assert worst is not None
    return worst


RunSamples = Callable[[list[list[np.ndarray]]], list[list[np.ndarray]]]  # every sample's inputs -> outputs


def check_accuracy(ctx: CheckContext, run: RunSamples, ran_on: str, output: BackendOutput) -> Check:
    """A reduced-precision candidate run on every sample it was not made from and judged by the accuracy budget."""
    data = ctx.precision_data
    assert data is not None
    samples, expected = data.unseen_by(ctx.options.precision, output.data_free)
    outputs = run([ordered(ctx, feeds) for feeds in samples])
    accuracy = measure(outputs, expected, ctx.options.accuracy, data.data)
    return Check("verified" if accuracy.met else "mismatch", ran_on, 0.0, max_rel_err=accuracy.max_rel_err,
                 detail="" if accuracy.met else f"over the accuracy budget: {accuracy.describe()}", accuracy=accuracy)


def accuracy_under_emulation(ctx: CheckContext, backend: Backend, output: BackendOutput, meta: dict,
                             workdir: Path) -> Check:
    """check_accuracy for a foreign CPU: the artifact runs in the target arch's Python under qemu-user."""
    python = emulation.find_python_emulator(ctx.target.arch, backend.runtime_requirement())
    if not isinstance(python, emulation.PythonEmulator):
        return Check("error", "qemu-user", 0.0, detail=f"cannot run {backend.name} for {ctx.target.arch} here: {python}")
    return check_accuracy(ctx, lambda samples: emulation.run_runtime_samples(python, workdir, meta, samples),
                          python.describe(), output)


def native_precisions(target: Target) -> list[str]:
    """The precisions kiln-precision auto tries for target: float32, int8, and bf16/f16 where its CPU has them."""
    return [p for p in PRECISIONS if target.computes_natively(p)]


def brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:400]

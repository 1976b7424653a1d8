"""The support matrix (frameworks x targets), generated from the catalog for `kiln targets` and the README."""
from __future__ import annotations

from modelkiln.compiler.coreml import FRAMEWORKS as COREML_FRAMEWORKS
from modelkiln.compiler.emulation import QEMU
from modelkiln.frontends import ALL_FRAMEWORKS, FRONTENDS
from modelkiln.targets.catalog import (
    PLATFORM_ACCELERATORS, PLATFORM_ARCHES, PLATFORM_OSES, Target, Unsupported, device_names, entry_for_device,
    entry_for_platform,
)

SHORT = {"TENSORFLOW": "TF", "KERAS": "Keras", "MXNET": "MXNet", "ONNX": "ONNX", "PYTORCH": "PyTorch",
         "XGBOOST": "XGB", "TFLITE": "TFLite", "DARKNET": "Darknet", "SKLEARN": "sklearn"}


GPU_CHECKS = {
    "cuda": "verified on a CUDA GPU where one is present; else *checked: PTX + host twin* (ptxas assembles the PTX)",
    "vulkan": "verified on lavapipe: the artifact runs on Mesa's Vulkan driver on the CPU",
    "opencl": "*checked: PoCL kernels + host twin*: not run as a whole; its OpenCL kernels run on PoCL, op by op",
}


def check_method(target: Target) -> str:
    """How Kiln checks artifacts for this target on an x86-64 build host."""
    if target.device_type == "coreml":
        return "*checked: spec only* (Core ML needs macOS): the package's spec is checked against the request"
    if target.gpu:
        return GPU_CHECKS[target.gpu.api]
    if target.arch == "x86_64":
        return "verified natively: every backend run and timed"
    if target.arch in QEMU:
        return "verified under qemu-user: each candidate run with its own aarch64 runtime"
    return "*checked: host twin*: not run; the same backend's build for this CPU runs, the target's ELF is checked"


def runs_on(target: Target) -> str:
    if target.device_type == "coreml":
        return "Apple devices (Core ML ML Program)"
    host = f"{target.arch} {target.mcpu}"
    return f"{target.gpu.api} {target.gpu.code or '(gpu-code)'}, {host} host" if target.gpu else host


def frameworks(target: Target) -> list[str]:
    """The frameworks a target takes: GPU targets take no tree ensembles (Treelite and ONNX-ML are CPU code)."""
    if target.device_type == "coreml":
        return list(COREML_FRAMEWORKS)
    trees = ("XGBOOST", "SKLEARN")
    return [f for f in FRONTENDS if not (target.gpu and f in trees)]


def rows() -> list[tuple[str, object]]:
    """Every TargetDevice, then every TargetPlatform (Os/Arch[/Accelerator]), with its catalog entry."""
    out: list[tuple[str, object]] = [(d, entry_for_device(d)) for d in device_names()]
    for os in PLATFORM_OSES:
        for arch in PLATFORM_ARCHES:
            for accel in (None, *PLATFORM_ACCELERATORS):
                name = f"{os}/{arch}" + (f"/{accel}" if accel else "")
                out.append((name, entry_for_platform(os, arch, accel)))
    return out


def render_markdown() -> str:
    head = ["Target", "Runs on", "Backends (preference)", "Checked by", *(SHORT[f] for f in ALL_FRAMEWORKS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in rows():
        if isinstance(entry, Unsupported):
            cells = [f"`{name}`", "—", "unsupported", entry.reason.replace("|", "/"), *("" for _ in ALL_FRAMEWORKS)]
        else:
            order = ", ".join(entry.backends or ["coremltools"]) + (
                f"; trees: {', '.join(entry.tree_backends)}" if entry.tree_backends else "")
            takes = frameworks(entry)
            cells = [f"`{name}`", runs_on(entry), order, check_method(entry),
                     *("✓" if f in takes else "" for f in ALL_FRAMEWORKS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_text() -> str:
    lines = []
    for name, entry in rows():
        if isinstance(entry, Unsupported):
            lines.append(f"{name:<28} unsupported: {entry.reason}")
        else:
            lines.append(f"{name:<28} {runs_on(entry):<40} {', '.join(entry.backends or ['coremltools']):<30} {check_method(entry)}")
    lines.append("Frameworks: " + ", ".join(FRONTENDS) + " (others: not yet)")
    return "\n".join(lines)

"""The support matrix (frameworks x targets), generated from the catalog for `kiln targets` and the README."""
from __future__ import annotations

from modelkiln.compiler.emulation import QEMU
from modelkiln.frontends import ALL_FRAMEWORKS, FRONTENDS
from modelkiln.targets.catalog import (
    PLATFORM_ACCELERATORS, PLATFORM_ARCHES, PLATFORM_OSES, Unsupported, device_names, entry_for_device,
    entry_for_platform,
)

SHORT = {"TENSORFLOW": "TF", "KERAS": "Keras", "MXNET": "MXNet", "ONNX": "ONNX", "PYTORCH": "PyTorch",
         "XGBOOST": "XGB", "TFLITE": "TFLite", "DARKNET": "Darknet", "SKLEARN": "sklearn"}


def check_method(arch: str) -> str:
    """How Kiln checks artifacts for this architecture on an x86-64 build host."""
    if arch == "x86_64":
        return "native: every backend verified and timed"
    if arch in QEMU:
        return "qemu-user: each candidate run with its own aarch64 runtime"
    return "not run on target: host-twin build checked"


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
    head = ["Target", "CPU", "Backends (preference)", "Checked by", *(SHORT[f] for f in ALL_FRAMEWORKS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in rows():
        if isinstance(entry, Unsupported):
            cells = [f"`{name}`", "—", "unsupported", entry.reason.replace("|", "/"), *("" for _ in ALL_FRAMEWORKS)]
        else:
            cpu = f"{entry.arch} {entry.mcpu}"
            order = ", ".join(entry.backends) + (f"; trees: {', '.join(entry.tree_backends)}" if entry.tree_backends else "")
            cells = [f"`{name}`", cpu, order, check_method(entry.arch),
                     *("✓" if f in FRONTENDS else "" for f in ALL_FRAMEWORKS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_text() -> str:
    lines = []
    for name, entry in rows():
        if isinstance(entry, Unsupported):
            lines.append(f"{name:<28} unsupported: {entry.reason}")
        else:
            lines.append(f"{name:<28} {entry.arch:<7} {entry.mcpu:<15} {', '.join(entry.backends):<30} "
                         f"{check_method(entry.arch)}")
    lines.append("Frameworks: " + ", ".join(FRONTENDS) + " (others: not yet)")
    return "\n".join(lines)

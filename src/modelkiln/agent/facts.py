"""What a device is, as its agent reports it at registration: architecture, CPU, memory, OS, Python, the
runtime packages installed, and whether this Python runs under an emulator (qemu-user)."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Dict

RUNTIME_PACKAGES = ("numpy", "onnxruntime", "openvino", "iree-base-runtime", "apache-tvm", "modelkiln-runtime",
                    "modelkiln")
# runtime.model has the same table, but importing it imports numpy into the agent, whose forked jobs must
# import numpy themselves for a real cold load
_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "armv7", "armv8l": "armv7"}
_COMPAT = {"x86_64": {"i686"}, "aarch64": {"armv7"}}  # userlands these kernels run natively
AGENT_VERSION = "1"  # the agent-server protocol (Kiln.* operations and their shapes)


def device_facts() -> Dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    facts: Dict[str, Any] = {
        "Arch": host_arch(), "Cpu": _cpu_name(cpuinfo), "CpuCount": os.cpu_count() or 1,
        "MemoryBytes": _memory_bytes(), "Os": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(), "Runtimes": runtime_versions(), "AgentVersion": AGENT_VERSION,
    }
    emulator = emulated_by(cpuinfo)
    facts["Emulated"] = bool(emulator)
    if emulator:
        facts["EmulatedBy"] = emulator
    return facts


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH.get(machine, machine)


def runtime_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version  # 3.8+
    found = {}
    for name in RUNTIME_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def emulated_by(cpuinfo: str) -> str:
    """"qemu-user: ..." when this process's architecture is not the kernel's (an aarch64 Python on an x86_64
    kernel runs under qemu-user, binfmt or not); empty when native. qemu-user fakes uname() and may show an
    ARM /proc/cpuinfo (-L roots do), but not /proc/sys/kernel/arch (Linux 5.19+): the CPU flags are the fallback."""
    arch = host_arch()
    raw = _read("/proc/sys/kernel/arch").strip()
    kernel = _ARCH.get(raw, raw)
    if kernel:
        native = {kernel} | _COMPAT.get(kernel, set())
        host = kernel
    else:
        x86_cpu = "vendor_id" in cpuinfo and "flags" in cpuinfo
        arm_cpu = "CPU implementer" in cpuinfo or "Features" in cpuinfo
        host = "x86_64" if x86_cpu and not arm_cpu else "aarch64" if arm_cpu and not x86_cpu else arch
        native = {host} | _COMPAT.get(host, set())
    if arch in native:
        return ""
    return f"qemu-user: {arch} code on an {host} kernel; its timings are the emulator's, not a real {arch} CPU's"


def _cpu_name(cpuinfo: str) -> str:
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in cpuinfo.splitlines():
            if line.split(":", 1)[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""



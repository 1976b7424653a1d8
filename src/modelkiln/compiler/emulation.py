"""Run foreign-architecture IREE artifacts under qemu-user, with that architecture's iree-run-module.

`make cross-runtimes` unpacks the aarch64 iree-base-runtime wheel (same version as the compiler) under
`<venv>/share/kiln/cross/aarch64`; Debian's qemu-user-static and libc6/libstdc++6-arm64-cross provide
the emulator and the sysroot. KILN_CROSS_DIR overrides the location of the unpacked runtimes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Kiln arch -> (qemu binary, sysroot with that arch's libc and libstdc++)
QEMU = {"aarch64": ("qemu-aarch64-static", "/usr/aarch64-linux-gnu")}
TIMEOUT_S = 900


@dataclass(frozen=True)
class Emulator:
    arch: str
    qemu: str
    sysroot: str
    run_module: Path

    def describe(self) -> str:
        return f"qemu-user ({Path(self.qemu).name}) with iree-run-module for {self.arch}"


def cross_dir() -> Path:
    return Path(os.environ.get("KILN_CROSS_DIR", Path(sys.prefix) / "share" / "kiln" / "cross"))


def find_emulator(arch: str) -> Emulator | str:
    """An Emulator for arch, or the reason none is available here."""
    if arch not in QEMU:
        return f"no runtime for {arch} can be had here (no {arch} iree-base-runtime wheel exists)"
    qemu_name, sysroot = QEMU[arch]
    qemu = shutil.which(qemu_name) or shutil.which(qemu_name.removesuffix("-static"))
    if not qemu:
        return f"{qemu_name} is not installed (make system-deps installs qemu-user-static)"
    if not Path(sysroot, "lib").is_dir():
        return f"no {arch} sysroot at {sysroot} (make system-deps installs it)"
    run_module = cross_dir() / arch / "iree" / "_runtime_libs" / "iree-run-module"
    if not run_module.is_file():
        return f"the {arch} IREE runtime is not unpacked at {run_module} (run make cross-runtimes)"
    return Emulator(arch, qemu, sysroot, run_module)


def run_iree(emulator: Emulator, module: Path, entry: str, inputs: list[np.ndarray], n_outputs: int) -> list[np.ndarray]:
    """Run one call of `entry` in the .vmfb under emulation; numpy in, numpy out."""
    with tempfile.TemporaryDirectory(prefix="kiln-emu-") as tmp:
        args = [emulator.qemu, "-L", emulator.sysroot, str(emulator.run_module), "--device=local-sync",
                f"--module={module}", f"--function={entry}"]
        for i, array in enumerate(inputs):
            np.save(f"{tmp}/in{i}.npy", array)
            args.append(f"--input=@{tmp}/in{i}.npy")
        args += [f"--output=@{tmp}/out{i}.npy" for i in range(n_outputs)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"iree-run-module under qemu failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
        return [np.load(f"{tmp}/out{i}.npy") for i in range(n_outputs)]

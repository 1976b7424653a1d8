"""Run foreign-architecture artifacts under qemu-user: IREE modules with that architecture's
iree-run-module, and the portable backends' artifacts (onnxruntime, OpenVINO) with Kiln's own runtime
in that architecture's Python.

`make cross-runtimes` unpacks, under `<venv>/share/kiln/cross`:
  aarch64/       the aarch64 iree-base-runtime wheel (same version as the compiler);
  aarch64-root/  Debian bookworm's arm64 python3.11 and the libraries it needs (.debs unpacked, not
                 installed), plus site/ with the aarch64 wheels of numpy, onnxruntime and openvino at
                 the versions installed in the venv.
Debian's qemu-user-static and libc6/libstdc++6-arm64-cross provide the emulator and IREE's sysroot.
KILN_CROSS_DIR overrides the location of the unpacked runtimes.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
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


# Kiln arch -> (qemu binary, interpreter inside that arch's root). The root is self-contained: qemu's
# -L makes every absolute path the guest opens resolve inside it first (ld.so, libc, the stdlib, and
# proc/cpuinfo, an ARM description that onnxruntime's cpuinfo needs instead of the host's x86 one).
PYTHON_ROOTS = {"aarch64": ("qemu-aarch64-static", "usr/bin/python3.11")}
PYTHON_VERSION = "3.11"

# Runs in a child Python (emulated, or this host's): argv = site, kiln (a copy of modelkiln.runtime), work folder,
# artifact folder. Inputs in0.npy... and meta.json in the work folder; writes out0.npy... and n_out.
_RUNNER = """\
import json, sys
site, kiln, work, artifact = sys.argv[1:5]
sys.path[:0] = [p for p in (site, kiln) if p]
from pathlib import Path
import numpy as np
from modelkiln.runtime.executors import open_executor
meta = json.loads(Path(work, "meta.json").read_text())
executor = open_executor(Path(artifact), meta, threads=1)
for sample in sorted(Path(work).glob("s*"), key=lambda p: int(p.name[1:])):
    inputs = [np.load(sample / f"in{i}.npy") for i in range(len(list(sample.glob("in*.npy"))))]
    outputs = executor.run(inputs)
    for i, out in enumerate(outputs):
        np.save(sample / f"out{i}.npy", np.asarray(out))
    (sample / "n_out").write_text(str(len(outputs)))
"""


@dataclass(frozen=True)
class PythonEmulator:
    """qemu-user running the arch's CPython with the backend's wheel for that arch."""

    arch: str
    qemu: str
    root: Path
    backend: str
    version: str

    @property
    def python(self) -> Path:
        return self.root / PYTHON_ROOTS[self.arch][1]

    @property
    def site(self) -> Path:
        return self.root / "site"

    def describe(self) -> str:
        return (f"qemu-user ({Path(self.qemu).name}) running {self.arch} Python {PYTHON_VERSION} "
                f"with {self.backend} {self.version}")


def python_root(arch: str) -> Path:
    return cross_dir() / f"{arch}-root"


def find_python_emulator(arch: str, requirement: str) -> PythonEmulator | str:
    """A PythonEmulator for arch that has the backend `requirement` ("onnxruntime==1.31.1")
    installed, or the reason none is available here."""
    if arch not in PYTHON_ROOTS:
        return f"no {arch} Python can be had here to run the runtime under emulation"
    dist, _, wanted = requirement.partition("==")
    qemu_name, interpreter = PYTHON_ROOTS[arch]
    qemu = shutil.which(qemu_name) or shutil.which(qemu_name.removesuffix("-static"))
    if not qemu:
        return f"{qemu_name} is not installed (make system-deps installs qemu-user-static)"
    root = python_root(arch)
    if not (root / interpreter).is_file():
        return f"no {arch} Python is unpacked at {root} (run make cross-runtimes)"
    found = {d.metadata["Name"].lower(): d.version for d in metadata.distributions(path=[str(root / "site")])}
    if dist.lower() not in found:
        return f"no {arch} wheel of {dist} is unpacked in {root / 'site'} (run make cross-runtimes)"
    if wanted and found[dist.lower()] != wanted:
        return (f"the {arch} {dist} in {root / 'site'} is {found[dist.lower()]}, the artifact needs {wanted} "
                f"(run make cross-runtimes)")
    return PythonEmulator(arch, qemu, root, dist, found[dist.lower()])


def run_runtime(emulator: PythonEmulator, artifact_dir: Path, meta: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Load the artifact in artifact_dir (its files as compiled.meta `meta` names them) with Kiln's
    runtime in the emulated Python, run it once on inputs; numpy in, numpy out."""
    return run_runtime_samples(emulator, artifact_dir, meta, [inputs])[0]


def run_runtime_samples(emulator: PythonEmulator, artifact_dir: Path, meta: dict,
                        samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """run_runtime on each sample, in one emulated Python (its start under qemu costs seconds)."""
    # A clean environment: the host's LD_*, QEMU_* and PYTHON* settings must not reach the guest.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    return _run_child([emulator.qemu, "-L", str(emulator.root), str(emulator.python), "-S"], str(emulator.site),
                      env, artifact_dir, meta, samples, f"{emulator.backend} in {emulator.arch} Python under qemu-user")


def run_isolated(artifact_dir: Path, meta: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the artifact once in a child Python of this host: GPU drivers (lavapipe, CUDA) load their own
    libraries (lavapipe its LLVM), and a crash there must fail one candidate, not the compile."""
    return _run_child([sys.executable], "", dict(os.environ), artifact_dir, meta, [inputs],
                      f"the {meta['Backend']['Name']} runtime on {meta['Backend'].get('Device', 'cpu')}")[0]


@functools.cache
def device_in_child(runtime: str, driver: str) -> str | None:
    """The first `driver` device (cuda, vulkan, opencl) that the Kiln runtime module `runtime` (run_iree, run_tvm)
    finds, asked in a child Python so that no GPU driver is loaded into this process; None when there is none."""
    code = f"from modelkiln.runtime.{runtime} import device_name; print(device_name({driver!r}) or '')"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def _run_child(python: list[str], site: str, env: dict[str, str], artifact_dir: Path, meta: dict,
               samples: list[list[np.ndarray]], what: str) -> list[list[np.ndarray]]:
    package = Path(__file__).resolve().parents[1]  # src/modelkiln
    with tempfile.TemporaryDirectory(prefix="kiln-run-") as tmp:
        work, kiln = Path(tmp, "io"), Path(tmp, "kiln")
        work.mkdir()
        # Only modelkiln.runtime goes in: it must run on a device that has nothing else of Kiln.
        shutil.copy(package / "__init__.py", _mkdir(kiln / "modelkiln") / "__init__.py")
        shutil.copytree(package / "runtime", kiln / "modelkiln" / "runtime",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (work / "meta.json").write_text(json.dumps(meta))
        for j, inputs in enumerate(samples):
            for i, array in enumerate(inputs):
                np.save(_mkdir(work / f"s{j}") / f"in{i}.npy", array)
        args = [*python, "-I", "-B", "-c", _RUNNER, site, str(kiln), str(work), str(Path(artifact_dir).resolve())]
        env = {**env, "HOME": tmp, "TMPDIR": tmp}
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{what} did not finish within {TIMEOUT_S} s") from None
        if proc.returncode != 0 or not all((work / f"s{j}" / "n_out").is_file() for j in range(len(samples))):
            lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}, no output"
            raise RuntimeError(f"{what} failed: {last}\n" + "\n".join(lines)[-2000:])
        return [[np.load(work / f"s{j}" / f"out{i}.npy") for i in range(int((work / f"s{j}" / "n_out").read_text()))]
                for j in range(len(samples))]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

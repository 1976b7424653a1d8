"""Check a compiled candidate against the source framework, and time it where it runs natively."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from modelkiln.frontends import TensorSpec
from modelkiln.runtime.executors import Executor
from modelkiln.runtime.model import host_arch, host_cpu_flags
from modelkiln.targets import Target

# Allowed error, relative to the largest reference magnitude of each output.
TOLERANCE = {"float32": 1e-3, "float16": 3e-2, "bfloat16": 3e-2}
SEED = 20261122
SAMPLE_ROWS = 256  # rows drawn for a free (-1) row dimension: tree models
INPUTS_USED = (f"one sample of each input, seed {SEED}: floats from a standard normal, "
               f"integers and bools uniform in {{0, 1}}; {SAMPLE_ROWS} rows where the row count is free")


@dataclass
class Check:
    """How a candidate was checked: where it ran and how far it was from the reference."""

    status: str  # verified | mismatch | error | not run on target arch | not run on a GPU | not run: needs macOS
    ran_on: str  # e.g. "host (x86_64)", "qemu-user (aarch64)"
    tolerance: float
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Within tolerance, on the target arch or by the checks that stand in for it."""
        return self.status == "verified" or self.status.startswith("not run")


def host_can_run(target: Target) -> bool:
    """True when code built for target runs natively here (same arch, needed CPU flags present)."""
    if target.gpu is not None or target.arch != host_arch():  # GPU code runs on a device, checked apart
        return False
    return target.arch != "x86_64" or set(target.features) <= host_cpu_flags()


def sample_inputs(specs: list[TensorSpec], seed: int = SEED) -> dict[str, np.ndarray]:
    """Inputs drawn from the declared shapes/dtypes: normal floats; integers and bools in {0, 1}
    (valid token ids, masks and indices for any vocabulary)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        shape = tuple(SAMPLE_ROWS if d == -1 else d for d in spec.shape)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], tolerance: float, ran_on: str) -> Check:
    """Max abs and relative error over all outputs; relative = abs / max |reference| per output."""
    if len(outputs) != len(reference):
        return Check("mismatch", ran_on, tolerance, detail=f"{len(outputs)} outputs, reference has {len(reference)}")
    worst_abs = worst_rel = 0.0
    for i, (out, ref) in enumerate(zip(outputs, reference)):
        if tuple(out.shape) != tuple(ref.shape):
            return Check("mismatch", ran_on, tolerance,
                         detail=f"output {i} has shape {list(out.shape)}, reference {list(ref.shape)}")
        out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
        if not np.array_equal(np.isnan(out64), np.isnan(ref64)):
            return Check("mismatch", ran_on, tolerance, detail=f"output {i} has NaNs where the reference has none")
        diff = np.nan_to_num(np.abs(out64 - ref64), nan=0.0)
        err = float(diff.max()) if diff.size else 0.0
        scale = float(np.nan_to_num(np.abs(ref64)).max()) if ref64.size else 0.0
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / max(scale, 1e-6))
    status = "verified" if worst_rel <= tolerance else "mismatch"
    return Check(status, ran_on, tolerance, worst_abs, worst_rel)


ELF_MACHINES = {3: "x86", 62: "x86_64", 40: "arm", 183: "aarch64"}
KILN_ARCH_ELF = {"x86_64": ("x86_64", 2), "aarch64": ("aarch64", 2), "armv7": ("arm", 1), "i686": ("x86", 1)}


def embedded_elf_arches(data: bytes) -> set[tuple[str, int]]:
    """(machine, ELF class) of every ELF image embedded in a file, e.g. the kernels inside a .vmfb."""
    found = set()
    start = data.find(b"\x7fELF")
    while start != -1 and start + 20 <= len(data):
        machine = int.from_bytes(data[start + 18:start + 20], "little")
        found.add((ELF_MACHINES.get(machine, str(machine)), data[start + 4]))
        start = data.find(b"\x7fELF", start + 4)
    return found


def median_latencies_ms(executors: dict[str, Executor], inputs: list[np.ndarray], budget_s: float = 3.0,
                        rounds: int = 3, min_runs: int = 5) -> dict[str, float]:
    """Latency of one run of each executor: timed in one block per round, the order rotating each round;
    each block's median, and of those the lowest. On a shared machine, load that comes and goes inflates
    some blocks; the least disturbed block says most about the candidate itself.
    Every block starts with an untimed run after a pause: runtimes whose worker threads spin after a run
    (onnxruntime's do) must not have that spinning charged to the next candidate."""
    names = list(executors)
    blocks: dict[str, list[float]] = {name: [] for name in names}
    block_s = budget_s / (rounds * len(names))
    for name in names:  # warm-up: first runs allocate memory and JIT kernels
        executors[name].run(inputs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(0.05)
            executors[name].run(inputs)
            deadline = time.perf_counter() + block_s
            times: list[float] = []
            while len(times) < min_runs or time.perf_counter() < deadline:
                start = time.perf_counter()
                executors[name].run(inputs)
                times.append((time.perf_counter() - start) * 1e3)
            blocks[name].append(statistics.median(times))
    return {name: min(medians) for name, medians in blocks.items()}

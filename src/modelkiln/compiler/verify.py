"""Check a compiled candidate against the source framework, and time it where it runs natively."""
from __future__ import annotations

import statistics
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelkiln.compiler.accuracy import Accuracy
from modelkiln.frontends import TensorSpec
from modelkiln.frontends.base import Quantization
from modelkiln.runtime.executors import Executor
from modelkiln.runtime.model import host_arch, host_cpu_flags
from modelkiln.targets import Target

# Allowed error, relative to the largest reference magnitude of each output.
TOLERANCE = {"float32": 1e-3, "float16": 3e-2, "bfloat16": 3e-2}
QUANT_STEPS = 2  # allowed error of a quantized output, in its quantization steps, whatever the precision

# A check's status. "verified": the artifact itself ran on its target's architecture (natively, under
# qemu-user, or on a device of its GPU API) and matched the source framework. Where it could not run here,
# the status says what stood in for that run; all such statuses start with CHECKED.
VERIFIED = "verified"
CHECKED = "checked: "
SAME_FILE = CHECKED + "same file on host"  # the identical portable file ran on this host's runtime
HOST_TWIN = CHECKED + "host twin"  # the same backend's build for this CPU ran; the target module's ELF checked
PTX_TWIN = CHECKED + "PTX + host twin"  # ptxas assembled the PTX for the GPU; a host build ran
POCL_TWIN = CHECKED + "PoCL kernels + host twin"  # the OpenCL kernels ran on PoCL op by op; a host build ran
OPENCL_TWIN = CHECKED + "OpenCL build + host twin"  # PoCL built the kernels (not run); a host build ran
SPEC_ONLY = CHECKED + "spec only"  # Core ML: the package's spec against the request; nothing computed


@dataclass
class Check:
    """How a candidate was checked: where it ran and how far it was from the reference."""

    status: str  # VERIFIED | a CHECKED status | mismatch | error
    ran_on: str  # e.g. "host (x86_64)", "qemu-user (aarch64)"
    tolerance: float
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    detail: str = ""
    accuracy: Accuracy | None = None  # reduced precision: judged on evaluation samples against a budget

    @property
    def passed(self) -> bool:
        """Within tolerance, on the target arch or by the checks that stand in for it."""
        return self.ran or self.status.startswith(CHECKED)

    @property
    def ran(self) -> bool:
        """The artifact itself ran on its target's architecture and matched."""
        return self.status == VERIFIED


def host_can_run(target: Target) -> bool:
    """True when code built for target runs natively here (same arch, needed CPU flags present)."""
    if target.gpu is not None or target.arch != host_arch():  # GPU code runs on a device, checked apart
        return False
    return target.arch != "x86_64" or set(target.features) <= host_cpu_flags()


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], tolerance: float, ran_on: str,
            quantization: Sequence[Quantization | None] | None = None) -> Check:
    """Max abs and relative error over all outputs; relative = abs / max |reference| per output. A quantized
    output (quantization[i]) is allowed QUANT_STEPS of its steps instead: integer kernels round differently, and
    one step can be a large share of a small output."""
    if len(outputs) != len(reference):
        return Check("mismatch", ran_on, tolerance, detail=f"{len(outputs)} outputs, reference has {len(reference)}")
    quantization = quantization or []
    worst_abs = worst_rel = 0.0
    failed, quantized = [], []
    for i, (out, ref) in enumerate(zip(outputs, reference)):
        if tuple(out.shape) != tuple(ref.shape):
            return Check("mismatch", ran_on, tolerance,
                         detail=f"output {i} has shape {list(out.shape)}, reference {list(ref.shape)}")
        out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
        finite = np.isfinite(ref64)
        # Non-finite values must agree exactly (NaN where NaN, +inf where +inf); the error and the scale are
        # over the finite ones, else one inf in the reference would make every other difference look tiny.
        same = (np.isnan(out64) == np.isnan(ref64)) & (finite | np.isnan(ref64) | (out64 == ref64))
        if not same.all():
            at = tuple(int(j) for j in np.argwhere(~same)[0])
            return Check("mismatch", ran_on, tolerance, detail=f"output {i} is {out64[at]} at {list(at)} where "
                         f"the reference is {ref64[at]}: non-finite values differ")
        diff = np.abs(out64 - ref64)[finite]
        err = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref64[finite]).max()) if diff.size else 0.0
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / max(scale, 1e-6))
        quant = quantization[i] if i < len(quantization) else None
        if quant is None:
            if err / max(scale, 1e-6) > tolerance:
                failed.append(f"output {i} max rel err {err / max(scale, 1e-6):.2e} > tolerance {tolerance:.0e}")
            continue
        step = quant.step(ref.dtype.name)
        quantized.append(f"output {i} allowed {QUANT_STEPS} quantization steps of {step:.3g} "
                         f"(= {QUANT_STEPS * step:.3g} absolute), off by {err / step:.3g}")
        if err > QUANT_STEPS * step * (1 + 1e-9):
            failed.append(f"output {i} is {err / step:.3g} quantization steps of {step:.3g} from the reference "
                          f"(allowed {QUANT_STEPS})")
    # Without quantized outputs the detail stays empty: callers word a plain tolerance miss themselves.
    detail = "; ".join([*failed, "tolerance is quantization-aware: " + ", ".join(quantized)]) if quantized else ""
    return Check("mismatch" if failed else "verified", ran_on, tolerance, worst_abs, worst_rel, detail)


ELF_MACHINES = {3: "x86", 62: "x86_64", 40: "arm", 183: "aarch64"}
KILN_ARCH_ELF = {"x86_64": ("x86_64", 2), "aarch64": ("aarch64", 2), "armv7": ("arm", 1), "i686": ("x86", 1)}


def embedded_elf_arches(data: bytes) -> set[tuple[str, int]]:
    """(machine, ELF class) of every ELF image embedded in a file, e.g. the kernels inside a .vmfb: each
    "\\x7fELF" is taken only where a whole, consistent ELF header and section table follow it, so bytes of
    weights that happen to spell the magic are not mistaken for code."""
    found = set()
    start = data.find(b"\x7fELF")
    while start != -1:
        image = _elf_header(data, start)
        if image:
            found.add(image)
        start = data.find(b"\x7fELF", start + 4)
    return found


def _elf_header(data: bytes, start: int) -> tuple[str, int] | None:
    """(machine, class) of a little-endian ELF image at start, or None when the header does not check out:
    class, encoding and version fields, header sizes, and a section table that lies inside the file."""
    header = data[start:start + 64]
    if len(header) < 52 or header[4] not in (1, 2) or header[5] != 1 or header[6] != 1:
        return None
    wide = header[4] == 2
    layout = "<HHIQQQIHHHHHH" if wide else "<HHIIIIIHHHHHH"
    size = struct.calcsize(layout)
    if len(header) < 16 + size:
        return None
    (e_type, machine, version, _entry, _phoff, shoff, _flags, ehsize, _phentsize, _phnum, shentsize, shnum,
     _shstrndx) = struct.unpack_from(layout, header, 16)
    if e_type not in (1, 2, 3) or version != 1 or ehsize != (64 if wide else 52):
        return None
    if shnum and (shentsize != (64 if wide else 40) or start + shoff + shnum * shentsize > len(data)):
        return None
    return ELF_MACHINES.get(machine, str(machine)), header[4]


HOPELESS = 3.0  # a candidate this many times slower than the fastest, run once, is not timed further


@dataclass
class Timing:
    """Each executor's latency (ms), and which were timed once only, being far slower than the fastest."""

    latencies_ms: dict[str, float]
    timed_once: set[str]


def median_latencies_ms(executors: dict[str, Executor], inputs: list[np.ndarray], budget_s: float = 3.0,
                        rounds: int = 3, min_runs: int = 5) -> Timing:
    """Latency of one run of each executor: timed in one block per round, the order rotating each round;
    each block's median, and of those the lowest. On a shared machine, load that comes and goes inflates
    some blocks; the least disturbed block says most about the candidate itself.
    Every block starts with an untimed run after a pause: runtimes whose worker threads spin after a run
    (onnxruntime's do) must not have that spinning charged to the next candidate. A candidate HOPELESS times
    slower than the fastest on its first timed run keeps that figure and is not timed further: it cannot win,
    and timing it would spend the compile's time (an untuned backend can take seconds a run)."""
    first: dict[str, float] = {}
    for name, executor in executors.items():  # warm-up (first runs allocate memory and JIT kernels), then one run
        executor.run(inputs)
        time.sleep(0.05)
        start = time.perf_counter()
        executor.run(inputs)
        first[name] = (time.perf_counter() - start) * 1e3
    fastest = min(first.values())
    names = [name for name in executors if first[name] <= HOPELESS * fastest]
    blocks: dict[str, list[float]] = {name: [] for name in names}
    block_s = budget_s / (rounds * len(names))
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
    latencies = {name: min(medians) for name, medians in blocks.items()}
    timed_once = set(first) - set(names)
    return Timing({**latencies, **{name: first[name] for name in timed_once}}, timed_once)

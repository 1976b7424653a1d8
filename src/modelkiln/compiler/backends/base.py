"""The interface every compiler backend implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import onnx

from modelkiln.targets import CompilerOptions, Target

if TYPE_CHECKING:  # compiler.calibration imports the frontends; backends need only the type
    from modelkiln.compiler.calibration import PrecisionData


@dataclass
class BackendOutput:
    """Files a backend wrote into its work folder, and what compiled.meta must say to run them."""

    files: list[str]  # names inside the work folder; the first is the one the runtime opens
    entry: dict = field(default_factory=dict)  # extra compiled.meta Backend fields (e.g. Entry function)
    command: str = ""  # the command line or API call, so users can reproduce it
    notes: list[str] = field(default_factory=list)
    # True when the files run on any host CPU (GPU code + bytecode): compiled.meta then names no CPU.
    host_independent: bool = False
    # The backend runtime the device needs to load these files, pip name -> ">=V" / "==V" / "==V.*"
    # (compiled.meta Requirements.Runtime, checked by the runtime on load); empty when it needs none.
    runtime: dict[str, str] = field(default_factory=dict)
    # True when no calibration sample went into a reduced-precision artifact (int8 weights quantized alone,
    # activations at run time): its accuracy is then judged on every sample, as a bf16 one's is.
    data_free: bool = False


class Backend(Protocol):
    name: str
    # True when the artifact's bytes do not depend on the CPU architecture (an IR the runtime JITs),
    # so running it on this host checks the very bytes that ship.
    portable: bool
    # The model forms it compiles (ConvertedModel.forms): "onnx", "onnx-ml" (ai.onnx.ml operators), "treelite".
    forms: tuple[str, ...]
    # True when Kiln's runtime, in the target arch's Python under qemu-user, runs the artifact (for
    # verification on foreign CPUs); False for IREE modules, run with iree-run-module.
    emulated_in_python: bool

    def version(self) -> str:
        """The backend's package version, recorded in compiled.meta."""
        ...

    def runtime_requirement(self) -> str:
        """The pip requirement a device needs to run the artifact."""
        ...

    def unsupported_reason(self, target: Target, options: CompilerOptions) -> str | None:
        """Why this backend cannot honour target+options, or None when it can."""
        ...

    def compile(self, model: onnx.ModelProto, target: Target, options: CompilerOptions, workdir: Path,
                data: PrecisionData | None = None) -> BackendOutput:
        """Compile the model (in the backend's form: ONNX, or a treelite.Model) for target into workdir, in
        options.precision (int8: quantized on data's calibration samples); raise CompilationError naming what
        failed."""
        ...


class GpuBackend(Backend, Protocol):
    """A backend the catalog lists for GPU targets also says how its GPU code can be checked here."""

    def gpu_device(self, api: str) -> str | None:
        """The name of a device of this GPU API on this machine that runs the artifact, or None."""
        ...

    def static_check(self, workdir: Path, output: BackendOutput, target: Target) -> str:
        """Check the device code without running it; return what was checked, raise CompilationError if wrong."""
        ...

    def run_kernels(self, model: onnx.ModelProto, target: Target, inputs: list) -> tuple[list, str] | str:
        """Without a device: run the model's GPU kernels on a stand-in here, (outputs, where), or why not."""
        ...

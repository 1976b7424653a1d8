"""Load a Kiln artifact (model.tar.gz or its extracted folder) and run it."""
from __future__ import annotations

import json
import os
import platform
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from modelkiln.runtime.executors import open_executor
from modelkiln.runtime.versions import runtime_problem

META = "compiled.meta"
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "armv7", "armv8l": "armv7",
                 "i386": "i686", "i586": "i686", "x86": "i686"}


class ArtifactError(ValueError):
    """The artifact cannot run here, or was given inputs it does not take."""


class Model:
    """A compiled model: `Model("model.tar.gz").run({"data": x})` -> list of numpy arrays."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.directory, self.meta, self._tmp = unpack(Path(path))
        check_requirements(self.meta["Requirements"], device)
        self._inputs = self.meta["Model"]["Inputs"]
        self._outputs = self.meta["Model"]["Outputs"]
        # Parsed once: run() checks every input against these on every call.
        # A -1 dimension (a tree model's row count) takes any size.
        self._expected = [(i["name"], tuple(i["shape"]), np.dtype(i["dtype"])) for i in self._inputs]
        self._names = [i["name"] for i in self._inputs]
        self._executor = open_executor(self.directory, self.meta, threads)

    @property
    def backend(self) -> str:
        return self.meta["Backend"]["Name"]

    @property
    def input_names(self) -> list[str]:
        return list(self._names)

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(i["shape"]) for i in self._inputs]

    @property
    def input_dtypes(self) -> list[str]:
        return [i["dtype"] for i in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self._outputs]

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(o["shape"]) for o in self._outputs]

    @property
    def output_dtypes(self) -> list[str]:
        return [o["dtype"] for o in self._outputs]

    def run(self, inputs: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once. Inputs: one array (single-input models), a list in input order, or a dict by name."""
        return self._executor.run(self._arrange(inputs))

    def _arrange(self, inputs) -> list[np.ndarray]:
        # Runs on every call: for a 40 µs model a few µs here are a tenth of its latency, so the cheap checks of the
        # common cases (an array, a list) come before Mapping's slower abstract-class check.
        names = self._names
        if isinstance(inputs, np.ndarray):
            if len(names) != 1:
                raise ArtifactError(f"the model takes {len(names)} inputs {names}; pass a dict or a list")
            arrays = [inputs]
        elif isinstance(inputs, (list, tuple)):
            arrays = inputs
        elif isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(names))
            missing = [n for n in names if n not in inputs]
            if unknown or missing:
                raise ArtifactError(f"inputs must be named {names}; unknown {unknown}, missing {missing}")
            arrays = [inputs[n] for n in names]
        else:
            arrays = list(inputs)
        if len(arrays) != len(names):
            raise ArtifactError(f"the model takes {len(names)} inputs {names}, got {len(arrays)}")
        return [_conform(expected, a) for expected, a in zip(self._expected, arrays)]


def _conform(expected: tuple[str, tuple[int, ...], np.dtype], array) -> np.ndarray:
    """The input as the compiled model takes it, or an error naming what differs."""
    name, shape, dtype = expected
    if type(array) is np.ndarray and array.shape == shape and array.dtype == dtype and array.flags.c_contiguous:
        return array  # as compiled: the usual case, checked in one line
    array = np.asarray(array)
    if array.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, array.shape)):
        raise ArtifactError(
            f"input {name!r} must have shape {list(shape)}, got {list(array.shape)} "
            "(the model was compiled for fixed shapes: recompile with another DataInputConfig)"
        )
    if array.dtype != dtype:
        if not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise ArtifactError(f"input {name!r} must be {dtype}, got {array.dtype}")
        array = array.astype(dtype)
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def unpack(path: Path) -> tuple[Path, dict, tempfile.TemporaryDirectory | None]:
    """(folder, compiled.meta, temp dir to keep alive) for an artifact folder or model.tar.gz."""
    tmp = None
    if path.is_file() and tarfile.is_tarfile(path):
        tmp = tempfile.TemporaryDirectory(prefix="kiln-model-")
        with tarfile.open(path) as tar:
            _extract(tar, tmp.name)
        directory = Path(tmp.name)
    elif path.is_dir():
        directory = path
    elif path.exists():
        raise ArtifactError(f"{path} is neither an artifact folder nor a model.tar.gz")
    else:
        raise ArtifactError(f"{path} does not exist")
    if not (directory / META).is_file():
        raise ArtifactError(f"{path} is not a Kiln artifact: it has no {META}")
    return directory, json.loads((directory / META).read_text()), tmp


def _extract(tar: tarfile.TarFile, directory: str) -> None:
    """Extract with tarfile's "data" filter; Pythons without it (before 3.8.17, 3.9.17, 3.10.12, 3.11.4: JetPack 5's
    3.8.10 among them) get the same refusals by hand: only regular files and folders, all inside `directory`."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(directory, filter="data")
    else:
        check_members(tar, directory)
        tar.extractall(directory)


def check_members(tar: tarfile.TarFile, directory: str) -> None:
    """Refuse links, special files and paths that leave `directory` (absolute, or with ..)."""
    root = os.path.realpath(directory)
    for member in tar.getmembers():
        inside = os.path.realpath(os.path.join(root, member.name))
        if not (member.isfile() or member.isdir()) or os.path.commonpath([root, inside]) != root:
            raise ArtifactError(f"the archive's member {member.name!r} is a link, a special file or outside the "
                                "archive's folder: this is not an artifact Kiln wrote")


def host_arch() -> str:
    """This machine's architecture in Kiln's terms (x86_64, aarch64, armv7)."""
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def check_requirements(requirements: dict, device: str) -> None:
    """Refuse an artifact built for another device type, architecture or CPU, naming both, or one whose backend
    runtime here is missing or older than it needs (Requirements.Runtime), naming the pip command."""
    wanted = requirements.get("TargetDeviceType", "cpu")
    if wanted == "coreml":
        raise ArtifactError("this artifact is a Core ML package (model.mlpackage): load it with Core ML on an Apple "
                            "device, or with coremltools on macOS; Kiln's runtime does not run it.")
    if wanted != device:
        raise ArtifactError(f'Compiled model requires device type "{wanted}" but user gave "{device}".')
    arch, target = requirements.get("Arch"), requirements.get("TargetDevice", "?")
    if arch and arch != host_arch():
        raise ArtifactError(
            f"this artifact was built for {arch} ({target}), but this machine is {host_arch()}: "
            f"run it on a {target} device, or compile again for this machine's target."
        )
    flags = host_cpu_flags()
    missing = sorted(set(requirements.get("CpuFlags", [])) - flags)
    if missing and flags:
        raise ArtifactError(
            f"this artifact was built for CPU {requirements.get('Mcpu')} ({target}) and needs CPU features "
            f"{', '.join(missing)}, which this machine lacks: compile with an mcpu this CPU implements."
        )
    problem = runtime_problem(requirements.get("Runtime", {}))
    if problem:
        raise ArtifactError(problem)


def host_cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where unknown)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


class DLRModel:
    """DLR's Python API over a Kiln artifact, for code written against Neo's runtime."""

    def __init__(self, model_path: str, dev_type: str = "cpu", dev_id: int = 0, threads: int | None = None) -> None:
        self._model = Model(model_path, device=dev_type, threads=threads)

    def run(self, input_values) -> list[np.ndarray]:
        return self._model.run(input_values)

    def get_input_names(self) -> list[str]:
        return self._model.input_names

    def get_output_names(self) -> list[str]:
        return self._model.output_names

    def get_input_dtypes(self) -> list[str]:
        return self._model.input_dtypes

    def get_output_dtypes(self) -> list[str]:
        return self._model.output_dtypes

    def get_input_dtype(self, index: int) -> str:
        return self._model.input_dtypes[index]

    def get_output_dtype(self, index: int) -> str:
        return self._model.output_dtypes[index]

    def get_input_shape(self, index: int) -> tuple[int, ...]:
        return self._model.input_shapes[index]

    def get_output_shape(self, index: int) -> tuple[int, ...]:
        return self._model.output_shapes[index]

    def has_metadata(self) -> bool:
        return True

    def get_version(self) -> str:
        return self._model.meta.get("Kiln", {}).get("Version", "unknown")

"""What every frontend returns: the model in common form (ONNX) plus a way to run the source model."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from modelkiln.errors import CompilationError

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, static shape, numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def as_meta(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class ConvertedModel:
    """A framework model in Kiln's common form, with its source framework as the reference."""

    onnx_model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reference: Callable[[Feeds], list[np.ndarray]]  # the source framework running the source model
    framework: str
    framework_version: str | None  # as read from the model files, when they say
    converters: dict[str, str] = field(default_factory=dict)  # package -> version used
    notes: list[str] = field(default_factory=list)


def find_model_files(model_dir: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under model_dir ending in one of suffixes, ignoring macOS/hidden litter."""
    found = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if any(p.startswith(".") or p == "__MACOSX" for p in rel.parts):
            continue
        if path.is_file() and path.name.lower().endswith(suffixes):
            found.append(path)
    return found


def exactly_one(model_dir: Path, suffixes: tuple[str, ...], framework: str) -> Path:
    """The single model file of the archive, or a typed error saying what Neo's rule is."""
    files = find_model_files(model_dir, suffixes)
    kinds = " or ".join(suffixes)
    if len(files) == 1:
        return files[0]
    if not files:
        present = [p.relative_to(model_dir).as_posix() for p in find_model_files(model_dir, ("",))]
        raise CompilationError(
            "fetch",
            f"no {kinds} file in the model archive for {framework} (it holds: "
            f"{', '.join(present[:10]) or 'nothing'}).",
            f"put exactly one {kinds} file in model.tar.gz, or set Framework to the model's framework.",
        )
    names = ", ".join(p.relative_to(model_dir).as_posix() for p in files)
    raise CompilationError(
        "fetch",
        f"exactly one {kinds} file is allowed for {framework} models; the archive holds {len(files)}: {names}.",
        f"remove all but one {kinds} file from model.tar.gz.",
    )

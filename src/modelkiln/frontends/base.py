"""What every frontend returns: the model in common form (ONNX, or a Treelite model for tree ensembles)
plus a way to run the source model."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelkiln.errors import CompilationError

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Quantization:
    """How a quantized tensor's integers map to real numbers: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str  # the integer type of the quantized values, e.g. "int8"

    def step(self, dtype: str) -> float:
        """One quantization step in units of a tensor of dtype: 1 for the integers, scale once dequantized."""
        return 1.0 if np.dtype(dtype).kind in "iu" else self.scale


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (static; -1 only for the free row count of tree models), dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    # Set for quantized tensors, and for float outputs the model dequantizes from one (int8 TFLite models).
    quantization: Quantization | None = None

    def as_meta(self) -> dict:
        meta = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.quantization is not None:
            meta["quantization"] = dataclasses.asdict(self.quantization)
        return meta


@dataclass
class ConvertedModel:
    """A framework model in Kiln's common form, with its source framework as the reference."""

    onnx_model: onnx.ModelProto | None  # None: a tree ensemble no converter here takes to ONNX
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reference: Callable[[Feeds], list[np.ndarray]]  # the source framework running the source model
    framework: str
    framework_version: str | None  # as read from the model files, when they say
    converters: dict[str, str] = field(default_factory=dict)  # package -> version used
    notes: list[str] = field(default_factory=list)
    tree_model: Any = None  # a treelite.Model, for tree ensembles (XGBoost, scikit-learn forests)

    @property
    def forms(self) -> set[str]:
        """The forms a backend may compile: "treelite", "onnx" (standard operators only) or "onnx-ml"
        (ONNX using the ai.onnx.ml operators, e.g. TreeEnsemble, Scaler, LinearClassifier)."""
        forms = {"treelite"} if self.tree_model is not None else set()
        if self.onnx_model is not None:
            ml = any(n.domain == "ai.onnx.ml" for n in self.onnx_model.graph.node)
            forms.add("onnx-ml" if ml else "onnx")
        return forms


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


def checked_onnx_model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    """A model around a graph a frontend built itself, at the IR version onnxruntime 1.31 loads (onnx 1.23's
    helpers default to 14), checked: a graph that fails the checker is Kiln's bug, said so."""
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="modelkiln")
    model.ir_version = 10
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise CompilationError("convert", f"the converted ONNX graph does not check: {str(exc).splitlines()[0]}",
                               "report this model to Kiln's maintainers.") from None
    return model


@contextlib.contextmanager
def fd_silenced(fd: int) -> Iterator[None]:
    """Send a file descriptor (1 or 2) to /dev/null for the block: native libraries (torch's C++ exporter,
    TensorFlow) print there directly, and Kiln's own errors say what matters."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)

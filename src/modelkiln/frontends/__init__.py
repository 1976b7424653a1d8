"""Framework frontends: one module per framework, each
`load(model_dir, data_input_config, input_dtype, frontend_options) -> ConvertedModel` (input_dtype: CompilerOptions
DTYPE; frontend_options: the Neo CompilerOptions a frontend may use, e.g. signature_def_key, output_names).

To add a framework: write `frontends/<name>.py` with a `load` function and register it in FRONTENDS.
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from importlib import metadata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modelkiln.errors import ValidationError
from modelkiln.frontends.base import ConvertedModel, TensorSpec

# Framework (the API's enum) -> module under frontends/. Imported lazily: torch is slow to import.
FRONTENDS = {
    "ONNX": "onnx", "PYTORCH": "pytorch", "TENSORFLOW": "tensorflow", "KERAS": "keras", "TFLITE": "tflite",
    "MXNET": "mxnet", "DARKNET": "darknet", "XGBOOST": "xgboost", "SKLEARN": "sklearn",
}
ALL_FRAMEWORKS = ("TENSORFLOW", "KERAS", "MXNET", "ONNX", "PYTORCH", "XGBOOST", "TFLITE", "DARKNET", "SKLEARN")
FRAMEWORK_VERSION_FIELD = "InputConfig.FrameworkVersion"


@dataclass(frozen=True)
class VersionRule:
    """Which FrameworkVersion values Kiln honours: these major versions, up to the installed reader's version
    (a model written by a newer framework than Kiln's reader may use what the reader does not know)."""

    majors: tuple[int, ...]
    reader: str | None = None  # the distribution whose version caps it; None: Kiln's own reader, no cap


VERSION_RULES = {
    "ONNX": VersionRule((1,), "onnx"),
    "PYTORCH": VersionRule((1, 2), "torch"),
    "TENSORFLOW": VersionRule((1, 2), "tensorflow-cpu"),
    "KERAS": VersionRule((2, 3), "keras"),
    "TFLITE": VersionRule((2,), "tensorflow-cpu"),
    "MXNET": VersionRule((1,)),  # Kiln's own reader of MXNet 1.x files
    "DARKNET": VersionRule((0, 1, 2, 3, 4, 5)),  # Kiln's own reader; cfg/weights have not changed in form
    "XGBOOST": VersionRule((0, 1, 2, 3), "xgboost-cpu"),
    "SKLEARN": VersionRule((0, 1), "scikit-learn"),
}

__all__ = ["ConvertedModel", "TensorSpec", "check_framework", "check_framework_version", "frontend_for"]


def check_framework(framework: str) -> None:
    """Reject a Framework value Kiln does not (yet) read, naming the field."""
    if framework not in ALL_FRAMEWORKS:
        raise ValidationError("InputConfig.Framework", f"{framework!r} is not one of {', '.join(ALL_FRAMEWORKS)}")
    if framework not in FRONTENDS:
        raise ValidationError(
            "InputConfig.Framework",
            f"{framework} models are not supported by this Kiln release; supported: {', '.join(FRONTENDS)}. "
            "Convert the model to ONNX first.",
        )


def check_framework_version(framework: str, version: str | None) -> None:
    """Reject a FrameworkVersion Kiln cannot honour, rather than reading the model with something else."""
    if version is None:
        return
    rule = VERSION_RULES[framework]
    wanted = _numbers(version)
    if not wanted or wanted[0] not in rule.majors:
        majors = ", ".join(f"{m}.x" for m in rule.majors)
        raise ValidationError(FRAMEWORK_VERSION_FIELD, f"Kiln reads {framework} {majors} models, not {version}")
    if rule.reader is not None:
        installed = metadata.version(rule.reader)
        if wanted[:2] > _numbers(installed)[:2]:
            raise ValidationError(
                FRAMEWORK_VERSION_FIELD,
                f"{framework} {version} is newer than the {rule.reader} {installed} Kiln reads it with; save the "
                f"model with {framework} {'.'.join(map(str, _numbers(installed)[:2]))} or older, or leave "
                "FrameworkVersion out to let Kiln try")


def _numbers(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


Load = Callable[[Path, str | None, str | None, Mapping[str, Any]], ConvertedModel]


def frontend_for(framework: str) -> Load:
    """The `load` function of the framework's frontend module."""
    check_framework(framework)
    return importlib.import_module(f"modelkiln.frontends.{FRONTENDS[framework]}").load

"""Framework frontends: one module per framework, each
`load(model_dir, data_input_config, input_dtype, frontend_options) -> ConvertedModel` (input_dtype: CompilerOptions
DTYPE; frontend_options: the Neo CompilerOptions a frontend may use, e.g. signature_def_key, output_names).

To add a framework: write `frontends/<name>.py` with a `load` function and register it in FRONTENDS.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modelkiln.errors import ValidationError
from modelkiln.frontends.base import ConvertedModel, TensorSpec

# Framework (the API's enum) -> module under frontends/. Imported lazily: torch is slow to import.
FRONTENDS = {"ONNX": "onnx", "PYTORCH": "pytorch", "TENSORFLOW": "tensorflow", "KERAS": "keras", "TFLITE": "tflite", "XGBOOST": "xgboost", "SKLEARN": "sklearn", "MXNET": "mxnet", "DARKNET": "darknet"}
ALL_FRAMEWORKS = ("TENSORFLOW", "KERAS", "MXNET", "ONNX", "PYTORCH", "XGBOOST", "TFLITE", "DARKNET", "SKLEARN")

__all__ = ["ConvertedModel", "TensorSpec", "check_framework", "frontend_for"]


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


Load = Callable[[Path, str | None, str | None, Mapping[str, Any]], ConvertedModel]


def frontend_for(framework: str) -> Load:
    """The `load` function of the framework's frontend module."""
    check_framework(framework)
    return importlib.import_module(f"modelkiln.frontends.{FRONTENDS[framework]}").load

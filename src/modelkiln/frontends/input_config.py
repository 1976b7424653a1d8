"""DataInputConfig: the documented forms, parsed into (name, shape, dtype) records.

Forms accepted (AWS's docs): {"data": [1,3,224,224]}, {"a": [1,3], "b": [1,5]},
for PyTorch also [[1,3,224,224], [1,5]] (inputs named input0..N), and per input
{"shape": [...], "dtype": "float32"} in place of a bare shape. JSON or Python-literal syntax.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from modelkiln.errors import ValidationError
from modelkiln.frontends.base import TensorSpec
from modelkiln.literal import parse_literal

FIELD = "InputConfig.DataInputConfig"
INPUT_ALIASES = {"float": "float32", "long": "int64", "double": "float64"}  # Neo's spellings


def parse_data_input_config(text: str | None, allow_list: bool = False,
                            default_dtype: str = "float32") -> list[TensorSpec] | None:
    """Parse DataInputConfig; None when absent. Untyped inputs get default_dtype (CompilerOptions DTYPE)."""
    if text is None or not text.strip():
        return None
    raw = parse_literal(text, FIELD)
    if isinstance(raw, list):
        if not allow_list:
            raise ValidationError(FIELD, "the list form is for PyTorch only; use {\"input_name\": [shape]}")
        if raw and all(isinstance(d, int) for d in raw):
            raw = [raw]  # a single bare shape
        items = [(f"input{i}", v) for i, v in enumerate(raw)]
    elif isinstance(raw, dict):
        items = list(raw.items())
    else:
        raise ValidationError(FIELD, "must be a JSON object such as {\"data\": [1,3,224,224]}")
    if not items:
        raise ValidationError(FIELD, "names no inputs")
    return [_spec(str(name), value, default_dtype) for name, value in items]


def _spec(name: str, value: Any, dtype: str) -> TensorSpec:
    if isinstance(value, dict):
        unknown = set(value) - {"shape", "dtype"}
        if unknown or "shape" not in value:
            raise ValidationError(f"{FIELD}.{name}", "must be a shape list or {\"shape\": [...], \"dtype\": \"...\"}")
        dtype = value.get("dtype", dtype)
        value = value["shape"]
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ValidationError(f"{FIELD}.{name}", f"shape must be a list of integers, got {value!r}")
    if any(d < 1 for d in value):
        raise ValidationError(f"{FIELD}.{name}", f"every dimension must be >= 1, got {value}")
    try:
        parsed = np.dtype(INPUT_ALIASES.get(dtype, dtype)) if isinstance(dtype, str) else None
    except TypeError:
        parsed = None
    if parsed is None or parsed.kind not in "biuf":
        raise ValidationError(f"{FIELD}.{name}.dtype", f"{dtype!r} is not a numeric dtype such as float32 or int64")
    dtype = parsed.name
    return TensorSpec(name, tuple(value), dtype)

"""CompilerOptions: parse the JSON (or Python-dict style, as AWS's docs write it) into a record."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelkiln.errors import ValidationError
from modelkiln.literal import parse_literal

FIELD = "OutputConfig.CompilerOptions"
PRECISIONS = ("float32", "float16", "bfloat16")
# Neo's DTYPE: the data type of a PyTorch model's inputs, with the aliases AWS documents.
INPUT_DTYPES = {"float": "float32", "float32": "float32", "float16": "float16", "int32": "int32",
                "int64": "int64", "long": "int64"}
BACKENDS = ("onnxruntime", "openvino", "iree", "treelite", "tvm")
# Neo options kept as given: handed to the frontends (signature_def_key, output_names, class_labels) or read
# by the catalog for GPU and Android targets (gpu-code, cuda-ver, trt-ver, ANDROID_PLATFORM).
RECORDED = (
    "gpu-code", "trt-ver", "cuda-ver", "ANDROID_PLATFORM", "class_labels",
    "signature_def_key", "output_names",
)


@dataclass(frozen=True)
class CompilerOptions:
    """What the user asked of the compile; defaults come from the target catalog."""

    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    input_dtype: str | None = None  # DTYPE: dtype of inputs DataInputConfig does not type itself
    precision: str = "float32"  # Kiln's `kiln-precision`: compute precision a backend may use
    backend: str | None = None  # Kiln's `kiln-backend`: pin one backend
    recorded: dict[str, Any] = field(default_factory=dict)


def parse_compiler_options(text: str | None) -> CompilerOptions:
    """Parse a CompilerOptions string into CompilerOptions, naming the bad key on error."""
    if text is None or not text.strip():
        return CompilerOptions()
    raw = parse_literal(text, FIELD)
    if not isinstance(raw, dict):
        raise ValidationError(FIELD, "must be a JSON object, e.g. {\"mcpu\": \"cortex-a72\"}")
    known = ("mcpu", "mattr", "DTYPE", "dtype", "kiln-backend", "kiln-precision") + RECORDED
    for key in raw:
        if key not in known:
            raise ValidationError(f"{FIELD}.{key}", f"unknown option; known: {', '.join(known)}")
    return CompilerOptions(
        mcpu=_mcpu(raw.get("mcpu")),
        mattr=_mattr(raw.get("mattr")),
        input_dtype=_input_dtype(raw),
        precision=_choice("kiln-precision", raw.get("kiln-precision", "float32"), PRECISIONS),
        backend=_choice("kiln-backend", raw["kiln-backend"], BACKENDS) if "kiln-backend" in raw else None,
        recorded={k: raw[k] for k in RECORDED if k in raw},
    )


def _mcpu(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{FIELD}.mcpu", "must be a CPU name such as \"cortex-a72\"")
    return value


def _mattr(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValidationError(f"{FIELD}.mattr", "must be a list of features such as [\"+neon\"]")
    items = [i.strip() for i in items if i.strip()]
    for item in items:
        if item[0] not in "+-" or len(item) < 2:
            raise ValidationError(f"{FIELD}.mattr", f"feature {item!r} must start with + or -")
    return tuple(items)


def _input_dtype(raw: dict[str, Any]) -> str | None:
    key = "DTYPE" if "DTYPE" in raw else "dtype"
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, str) or value.lower() not in INPUT_DTYPES:
        raise ValidationError(f"{FIELD}.{key}", f"{value!r} is not one of {', '.join(INPUT_DTYPES)}")
    return INPUT_DTYPES[value.lower()]


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValidationError(f"{FIELD}.{name}", f"{value!r} is not one of {', '.join(allowed)}")
    return value

"""CompilerOptions: parse the JSON (or Python-dict style, as AWS's docs write it) into a record."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from modelkiln.errors import ValidationError
from modelkiln.literal import parse_literal

FIELD = "OutputConfig.CompilerOptions"
PRECISIONS = ("float32", "int8", "bfloat16", "float16")
AUTO = "auto"  # kiln-precision auto: every precision a backend supports for the target is a candidate
# kiln-accuracy: a budget on one metric, measured against the source on held-out evaluation samples.
ACCURACY_METRICS = {"top1_agreement": "at least", "cosine": "at least", "max_rel_err": "at most"}
# Neo's DTYPE: the data type of a PyTorch model's inputs, with the aliases AWS documents.
INPUT_DTYPES = {"float": "float32", "float32": "float32", "float16": "float16", "int32": "int32",
                "int64": "int64", "long": "int64"}
BACKENDS = ("onnxruntime", "openvino", "iree", "treelite", "tvm")
FORWARD_ARGS = "kiln-forward-args"  # PyTorch: constants for forward()'s non-tensor parameters
# Options kept as given: handed to the frontends (signature_def_key, output_names, class_labels, and Kiln's
# kiln-forward-args, checked here) or read by the catalog for GPU and Android targets (gpu-code, cuda-ver,
# trt-ver, ANDROID_PLATFORM).
RECORDED = (
    "gpu-code", "trt-ver", "cuda-ver", "ANDROID_PLATFORM", "class_labels",
    "signature_def_key", "output_names", FORWARD_ARGS,
)


@dataclass(frozen=True)
class AccuracyBudget:
    """How close a reduced-precision candidate must stay to the source: metric (ACCURACY_METRICS) and bound."""

    metric: str
    bound: float

    def met_by(self, value: float) -> bool:
        return value <= self.bound if self.metric == "max_rel_err" else value >= self.bound

    def describe(self) -> str:
        return f"{self.metric} {'<=' if self.metric == 'max_rel_err' else '>='} {self.bound:g}"


@dataclass(frozen=True)
class CompilerOptions:
    """What the user asked of the compile; defaults come from the target catalog."""

    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    input_dtype: str | None = None  # DTYPE: dtype of inputs DataInputConfig does not type itself
    precision: str = "float32"  # Kiln's `kiln-precision`: compute precision a backend may use, or "auto"
    accuracy: AccuracyBudget | None = None  # Kiln's `kiln-accuracy` (None: the default per output kind)
    calibration: str | None = None  # Kiln's `kiln-calibration`: s3:// URI of a calibration.npz
    backend: str | None = None  # Kiln's `kiln-backend`: pin one backend
    require_run: bool = False  # Kiln's `kiln-require-run`: fail unless the artifact itself ran and matched
    profile_on: str | None = None  # Kiln's `kiln-profile-on`: a registered device that times the candidates
    recorded: dict[str, Any] = field(default_factory=dict)


def parse_compiler_options(text: str | None) -> CompilerOptions:
    """Parse a CompilerOptions string into CompilerOptions, naming the bad key on error."""
    if text is None or not text.strip():
        return CompilerOptions()
    raw = parse_literal(text, FIELD)
    if not isinstance(raw, dict):
        raise ValidationError(FIELD, "must be a JSON object, e.g. {\"mcpu\": \"cortex-a72\"}")
    known = ("mcpu", "mattr", "DTYPE", "dtype", "kiln-backend", "kiln-precision", "kiln-accuracy", "kiln-calibration",
             "kiln-require-run", "kiln-profile-on") + RECORDED
    for key in raw:
        if key not in known:
            raise ValidationError(f"{FIELD}.{key}", f"unknown option; known: {', '.join(known)}")
    return CompilerOptions(
        mcpu=_mcpu(raw.get("mcpu")),
        mattr=_mattr(raw.get("mattr")),
        input_dtype=_input_dtype(raw),
        precision=_choice("kiln-precision", raw.get("kiln-precision", "float32"), (*PRECISIONS, AUTO)),
        accuracy=_accuracy(raw["kiln-accuracy"]) if "kiln-accuracy" in raw else None,
        calibration=_s3_uri("kiln-calibration", raw["kiln-calibration"]) if "kiln-calibration" in raw else None,
        backend=_choice("kiln-backend", raw["kiln-backend"], BACKENDS) if "kiln-backend" in raw else None,
        require_run=_flag("kiln-require-run", raw.get("kiln-require-run", False)),
        profile_on=_device_name(raw["kiln-profile-on"]) if "kiln-profile-on" in raw else None,
        recorded={k: _forward_args(raw[k]) if k == FORWARD_ARGS else raw[k] for k in RECORDED if k in raw},
    )


def _accuracy(value: Any) -> AccuracyBudget:
    """{"top1_agreement": 0.99} | {"cosine": 0.999} | {"max_rel_err": 0.01}: one metric and its bound."""
    field_name = f"{FIELD}.kiln-accuracy"
    example = 'e.g. {"top1_agreement": 0.99}, {"cosine": 0.999} or {"max_rel_err": 0.01}'
    if not isinstance(value, dict) or len(value) != 1:
        raise ValidationError(field_name, f"must be an object with one metric, {example}; got {value!r}")
    [(metric, bound)] = value.items()
    if metric not in ACCURACY_METRICS:
        raise ValidationError(field_name, f"{metric!r} is not one of {', '.join(ACCURACY_METRICS)}")
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        raise ValidationError(f"{field_name}.{metric}", f"must be a number, got {bound!r}")
    if metric == "max_rel_err" and not 0 < bound < 1e6 or metric != "max_rel_err" and not 0 < bound <= 1:
        allowed = "a positive number" if metric == "max_rel_err" else "in (0, 1]"
        raise ValidationError(f"{field_name}.{metric}", f"must be {allowed}, got {bound!r}")
    return AccuracyBudget(metric, float(bound))


def _s3_uri(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("s3://") or "/" not in value[5:] or value.endswith("/"):
        raise ValidationError(f"{FIELD}.{key}", f"must be the s3://bucket/key URI of a .npz file, got {value!r}")
    return value


def _device_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", value):
        raise ValidationError(f"{FIELD}.kiln-profile-on", "must name one of your devices (`kiln devices` lists "
                                                         f"them): letters, digits and '-', got {value!r}")
    return value


def _forward_args(value: Any) -> dict[str, Any] | list[Any]:
    """kiln-forward-args: {"name": constant} for forward()'s non-tensor parameters, or a list of the constants in
    the order of those parameters; a constant is a number, bool, string, null or a list of these."""
    field_name = f"{FIELD}.{FORWARD_ARGS}"
    if isinstance(value, dict):
        for name in value:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValidationError(field_name, f"{name!r} is not a parameter name of forward()")
        return {name: _constant(f"{field_name}.{name}", constant) for name, constant in value.items()}
    if isinstance(value, list | tuple):
        return [_constant(f"{field_name}[{i}]", constant) for i, constant in enumerate(value)]
    raise ValidationError(field_name, 'must be a JSON object of forward() parameters, e.g. {"sr": 16000}, or a '
                                      f"list of their values in order; got {value!r}")


def _constant(field_name: str, value: Any) -> Any:
    scalar = (bool, int, float, str, type(None))
    if isinstance(value, scalar):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, scalar) for v in value):
        return list(value)  # a Python-literal tuple as JSON would give it
    raise ValidationError(field_name, f"{value!r} is not a constant forward() can take: a number, bool, string, "
                                      "null or a list of these (tensors come from DataInputConfig)")


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{FIELD}.{key}", f"must be true or false, got {value!r}")
    return value


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

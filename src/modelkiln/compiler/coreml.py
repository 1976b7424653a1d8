"""Core ML target (Neo's TargetDevice `coreml`): PyTorch, TensorFlow and Keras models converted with
coremltools into an ML Program (.mlpackage).

Prediction needs macOS (coremltools' Linux wheel has no libcoremlpython), so Kiln checks the saved
package's spec instead (inputs, shape flexibility, image inputs, classifier labels) and reports
numerics as not run. coremltools is imported inside functions: this module imports without it.

Routes found to work with coremltools 9.0, torch 2.13, TensorFlow 2.21, Keras 3.15:
- TorchScript: torch.jit.load the file, ct.convert(module, inputs=[...]).
- torch.export .pt2: ct.convert needs the ATEN dialect, so program.run_decompositions({}) first; the
  program's shapes are static, so ranges and enumerated shapes are refused.
- SavedModel: ct.convert(dir) fails ("Only a single concrete function is supported" for a Keras
  model.export() dir), so the signature's concrete function is converted: ct.convert([fn]).
- Keras: ct.convert does not take a .keras path; the Keras 3 model object, loaded by Kiln's Keras
  frontend, converts (source="tensorflow").
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelkiln.errors import CompilationError, ValidationError
from modelkiln.literal import parse_literal

FIELD = "InputConfig.DataInputConfig"
LABELS_FIELD = "OutputConfig.CompilerOptions.class_labels"
PACKAGE = "model.mlpackage"
FRAMEWORKS = ("PYTORCH", "TENSORFLOW", "KERAS")
DEPLOYMENT_TARGET = "iOS15"  # the first release that runs ML Programs: the widest reach
ENTRY_KEYS = {"shape", "type", "bias", "scale", "color_layout", "default_shape", "name"}
COLOR_LAYOUTS = {"RGB": "RGB", "BGR": "BGR", "G": "GRAYSCALE", "GRAYSCALE": "GRAYSCALE"}
PREDICT_NOTE = ("numerics not run: Core ML prediction needs macOS (coremltools on Linux raises "
                "'Model prediction is only supported on macOS version 10.13 or later.').")


@dataclass(frozen=True)
class CoreMLInput:
    """One DataInputConfig entry. Exactly one of shape / range_dims / enumerated describes its shape
    (all None: the model's own shape, open dimensions fixed at 1)."""

    name: str | None  # None: a PyTorch input given by position (named input0, input1, ...)
    shape: tuple[int, ...] | None = None  # a fixed shape
    range_dims: tuple[tuple[int, int], ...] | None = None  # per dimension (lower, upper); lower == upper: fixed
    enumerated: tuple[tuple[int, ...], ...] | None = None
    default_shape: tuple[int, ...] | None = None  # with enumerated: the shape the model is built for
    image: bool = False
    bias: tuple[float, ...] = ()
    scale: float = 1.0
    color_layout: str = "RGB"  # RGB, BGR or GRAYSCALE

    def build_shape(self) -> tuple[int, ...] | None:
        """The shape the converter traces with: fixed, the enumerated default, or each range's lower end."""
        if self.range_dims is not None:
            return tuple(lo for lo, _ in self.range_dims)
        return self.default_shape if self.enumerated is not None else self.shape


@dataclass
class CoreMLResult:
    files: list[str]
    inputs: list[dict]
    outputs: list[dict]
    notes: list[str]
    command: str
    framework_version: str | None  # as recorded by the model files, when they record it
    converters: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # ct.convert's own time
    class_labels: list[str] | None = None  # as read from the option (list or archive file)


# ---------------------------------------------------------------------------------------------- parsing

def parse_inputs(data_input_config: str | None, framework: str) -> list[CoreMLInput]:
    """DataInputConfig in AWS's Core ML forms. PyTorch inputs go by position (list form; a dict's keys
    are taken in order as names), TensorFlow/Keras inputs by name (dict form). [] when absent."""
    if data_input_config is None or not data_input_config.strip():
        return []
    raw = parse_literal(data_input_config, FIELD)
    positional = framework.upper() == "PYTORCH"
    if isinstance(raw, list):
        if not positional:
            raise ValidationError(FIELD, f"{framework} inputs are keyed by input name, e.g. "
                                  "{\"input_1\": [1,224,224,3]}; the list form is for PyTorch.")
        if raw and all(_is_dim(d) for d in raw):
            raw = [raw]  # one bare shape
        items: list[tuple[str | None, Any]] = [(None, v) for v in raw]
    elif isinstance(raw, dict):
        if "shape" in raw and not any(isinstance(v, dict) for v in raw.values()) and positional:
            items = [(None, raw)]  # one unnamed {"shape": ...} entry
        else:
            items = [(str(k), v) for k, v in raw.items()]
    else:
        raise ValidationError(FIELD, "must be a JSON object {\"input_1\": [1,224,224,3]} or, for PyTorch, a list "
                              "[{\"shape\": [1,3,224,224]}]")
    if not items:
        raise ValidationError(FIELD, "names no inputs")
    return [_entry(name, value, f"{FIELD}.{name}" if name else f"{FIELD}[{k}]") for k, (name, value) in
            enumerate(items)]


def _entry(name: str | None, value: Any, where: str) -> CoreMLInput:
    if isinstance(value, list):
        value = {"shape": value}
    if not isinstance(value, dict) or "shape" not in value:
        raise ValidationError(where, f"must be a shape list or {{\"shape\": [...]}}, got {value!r}")
    unknown = set(value) - ENTRY_KEYS
    if unknown:
        raise ValidationError(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    name = str(value["name"]) if value.get("name") is not None else name
    shape = value["shape"]
    fixed = range_dims = enumerated = default = None
    if isinstance(shape, list) and shape and all(isinstance(s, list) for s in shape):
        enumerated = tuple(_fixed_shape(s, where) for s in shape)
        default = _fixed_shape(value["default_shape"], f"{where}.default_shape") if "default_shape" in value \
            else enumerated[0]
        if default not in enumerated:
            raise ValidationError(f"{where}.default_shape", f"{list(default)} is not one of the enumerated shapes "
                                  f"{[list(s) for s in enumerated]}")
        if len({len(s) for s in enumerated}) != 1:
            raise ValidationError(where, "enumerated shapes must all have the same rank")
    else:
        if "default_shape" in value:
            raise ValidationError(f"{where}.default_shape", "is only for enumerated shapes [[...], [...]]")
        dims = _dims(shape, where)
        if all(lo == hi for lo, hi in dims):
            fixed = tuple(lo for lo, _ in dims)
        else:
            range_dims = dims
    image = _input_type(value.get("type", "Tensor"), where)
    if not image and any(k in value for k in ("bias", "scale", "color_layout")):
        raise ValidationError(where, "bias, scale and color_layout apply to \"type\": \"Image\" inputs only")
    entry = CoreMLInput(name, fixed, range_dims, enumerated, default, image)
    return _with_image(entry, value, where) if image else entry


def _is_dim(d: Any) -> bool:
    return isinstance(d, int | str) and not isinstance(d, bool)


def _fixed_shape(value: Any, where: str) -> tuple[int, ...]:
    dims = _dims(value, where)
    if any(lo != hi for lo, hi in dims):
        raise ValidationError(where, f"enumerated shapes must be fixed, got {value!r}")
    return tuple(lo for lo, _ in dims)


def _dims(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    """Each dimension as (lower, upper): 224 or "224", or a range "1..10"."""
    if not isinstance(value, list) or not value:
        raise ValidationError(where, f"shape must be a non-empty list, got {value!r}")
    return tuple(_dim(d, where) for d in value)


def _dim(d: Any, where: str) -> tuple[int, int]:
    if isinstance(d, int) and not isinstance(d, bool):
        if d == -1:
            raise ValidationError(where, _UNBOUNDED)
        if d < 1:
            raise ValidationError(where, f"every dimension must be >= 1, got {d}")
        return d, d
    if isinstance(d, str):
        text = d.strip()
        match = re.fullmatch(r"(\d+)\s*\.\.\s*(-?\d+)", text)
        if text == "-1" or (match and match.group(2) == "-1"):
            raise ValidationError(where, _UNBOUNDED)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if not 1 <= lo <= hi:
                raise ValidationError(where, f"range {d!r} must be \"lower..upper\" with 1 <= lower <= upper")
            return lo, hi
        if text.isdigit() and int(text) >= 1:
            return int(text), int(text)
    raise ValidationError(where, f"dimension {d!r} is neither a positive integer nor a range such as \"1..10\"")


# coremltools 9 refuses unbounded RangeDims for ML Programs ("inputs with infinite upper_bound is not allowed").
_UNBOUNDED = ("an unbounded dimension (-1) cannot be compiled: Core ML ML Programs need an upper bound; "
              "give a range such as \"1..64\"")


def _input_type(value: Any, where: str) -> bool:
    kind = str(value).lower()
    if kind not in ("image", "tensor"):
        raise ValidationError(f"{where}.type", f"must be \"Image\" or \"Tensor\", got {value!r}")
    return kind == "image"


def _with_image(entry: CoreMLInput, value: dict, where: str) -> CoreMLInput:
    layout = COLOR_LAYOUTS.get(str(value.get("color_layout", "RGB")).upper())
    if layout is None:
        raise ValidationError(f"{where}.color_layout", f"must be RGB, BGR or G, got {value.get('color_layout')!r}")
    channels = 1 if layout == "GRAYSCALE" else 3
    bias = value.get("bias", [0.0] * channels)
    if not isinstance(bias, list) or len(bias) != channels or not all(_is_number(b) for b in bias):
        raise ValidationError(f"{where}.bias", f"must be a list of {channels} number(s) for {layout}, got {bias!r}")
    scale = value.get("scale", 1.0)
    if not _is_number(scale) or scale == 0:
        raise ValidationError(f"{where}.scale", f"must be a non-zero number, got {scale!r}")
    shape = entry.build_shape() or ()
    if len(shape) != 4 or shape[0] != 1 or channels not in (shape[1], shape[3]):
        raise ValidationError(where, f"an Image input's shape must be [1,{channels},H,W] (or [1,H,W,{channels}] for "
                              f"TensorFlow/Keras) for {layout}, got {list(shape)}")
    return replace(entry, bias=tuple(float(b) for b in bias), scale=float(scale), color_layout=layout)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_class_labels(class_labels: object, model_dir: Path) -> list[str] | None:
    """CompilerOptions class_labels: a list of labels, or a text file in the model archive (one per line)."""
    if class_labels is None or class_labels == "" or class_labels == []:
        return None
    if isinstance(class_labels, list | tuple):
        labels = [str(x) for x in class_labels]
    elif isinstance(class_labels, str):
        candidates = [p for p in model_dir.rglob("*") if p.is_file() and
                      (p.relative_to(model_dir).as_posix() == class_labels or p.name == class_labels)]
        if not candidates:
            raise ValidationError(LABELS_FIELD, f"no file {class_labels!r} in the model archive; give a list of "
                                  "labels or archive the labels file (one label per line) with the model")
        lines = candidates[0].read_text(encoding="utf-8").splitlines()
        labels = [line.strip() for line in lines if line.strip()]
    else:
        raise ValidationError(LABELS_FIELD, f"must be a list of labels or a file name, got {class_labels!r}")
    if not labels:
        raise ValidationError(LABELS_FIELD, "holds no labels")
    if len(set(labels)) != len(labels):
        raise ValidationError(LABELS_FIELD, "labels must be unique")
    return labels


# ---------------------------------------------------------------------------------------------- convert

@dataclass
class _Source:
    """A model made ready for ct.convert, with the inputs it declares (None dims: open)."""

    model: Any
    declared: list[tuple[str, tuple[int | None, ...] | None]]
    framework_version: str | None
    route: str  # how it reached ct.convert, for the report's command line
    static: bool = False  # a torch.export program: shapes fixed at export
    converters: dict[str, str] = field(default_factory=dict)
    keepalive: Any = None  # a SavedModel's loaded object: its signature's variables live as long as it does


def convert(model_dir: Path, framework: str, inputs: list[CoreMLInput], class_labels: object, workdir: Path
            ) -> CoreMLResult:
    """Convert the archive's model to workdir/model.mlpackage (an ML Program)."""
    framework = framework.upper()
    if framework not in FRAMEWORKS:
        raise CompilationError("convert", f"Core ML (TargetDevice coreml) takes PyTorch, TensorFlow and Keras "
                               f"models, not {framework}.",
                               "compile this model for another target, or export it from PyTorch, TensorFlow "
                               "or Keras.")
    labels = parse_class_labels(class_labels, model_dir)
    ct = _import_coremltools()
    source = _load_source(model_dir, framework)
    named = _name_inputs(inputs, source, framework)
    ct_inputs = _ct_inputs(ct, named, source, framework)
    classifier = ct.ClassifierConfig(labels) if labels else None
    started = time.perf_counter()
    mlmodel = _run_convert(ct, source, ct_inputs, classifier)
    seconds = time.perf_counter() - started
    spec = mlmodel.get_spec()
    if labels:
        _check_label_count(spec, labels)
    workdir.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(workdir / PACKAGE))
    return CoreMLResult(
        files=[PACKAGE], inputs=_features(spec.description.input), outputs=_features(spec.description.output),
        notes=_notes(named, source, labels), command=_command(source, named, labels),
        framework_version=source.framework_version,
        converters={"coremltools": ct.__version__, **source.converters}, seconds=round(seconds, 3),
        class_labels=labels,
    )


def _import_coremltools():
    """coremltools, quietly: on import it warns about untested torch/TF versions and logs that its
    macOS-only runtime (libcoremlpython) is missing; Kiln reports both facts itself."""
    import logging
    from modelkiln.frontends.tf_common import stderr_silenced
    with stderr_silenced():
        import coremltools as ct
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return ct


def _load_source(model_dir: Path, framework: str) -> _Source:
    from modelkiln.frontends.tf_common import stderr_silenced
    with stderr_silenced():
        if framework == "PYTORCH":
            return _load_pytorch(model_dir)
        if framework == "KERAS":
            return _load_keras(model_dir)
        return _load_saved_model(model_dir)


def _load_pytorch(model_dir: Path) -> _Source:
    # Reuses the PyTorch frontend's file rule and its TorchScript loader (typed errors for pickles).
    import torch
    from modelkiln.frontends.base import exactly_one
    from modelkiln.frontends.pytorch import SUFFIXES as PYTORCH_SUFFIXES, _load_torchscript
    path = exactly_one(model_dir, PYTORCH_SUFFIXES, "PyTorch")
    versions = {"torch": torch.__version__.split("+")[0]}
    if path.suffix != ".pt2":
        return _Source(_load_torchscript(path), [], None, f"torch.jit.load({path.name!r})", converters=versions)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise CompilationError("convert", f"{path.name} is not a torch.export archive ({_first_line(exc)}).",
                               "save it with torch.export.save(torch.export.export(model.eval(), (x,)), "
                               "'model.pt2')") from None
    # coremltools converts only the ATEN/EDGE dialect; torch.export.export gives the TRAINING dialect.
    program = program.run_decompositions({})
    user = list(program.graph_signature.user_inputs)
    declared = [(n.name, tuple(n.meta["val"].shape)) for n in program.graph.nodes
                if n.op == "placeholder" and n.name in user and "val" in n.meta]
    return _Source(program, declared, None, f"torch.export.load({path.name!r}).run_decompositions({{}})",
                   static=True, converters=versions)


def _load_keras(model_dir: Path) -> _Source:
    # Reuses the Keras frontend's loader (Keras 2 .h5 compatibility, typed errors) and version reader.
    from modelkiln.frontends.keras import _keras_version, load_built_model
    from modelkiln.frontends.tf_common import import_tensorflow, strip_port
    tf = import_tensorflow()
    path, model = load_built_model(model_dir)
    import keras
    declared = [(strip_port(t.name), tuple(t.shape)) for t in model.inputs]
    return _Source(model, declared, _keras_version(path), f"keras.models.load_model({path.name!r})",
                   converters={"keras": keras.__version__, "tensorflow": tf.__version__})


def _load_saved_model(model_dir: Path) -> _Source:
    # The TensorFlow frontend's SavedModel rule (one SavedModel folder) and its signature default.
    from modelkiln.frontends.tensorflow import DEFAULT_SIGNATURE, SAVE_HINT, _saved_model_dir
    from modelkiln.frontends.tf_common import import_tensorflow
    folder = _saved_model_dir(model_dir)
    if folder is None:
        raise CompilationError("fetch", "no SavedModel (saved_model.pb) in the model archive; Core ML compiles "
                               "TensorFlow SavedModels.", SAVE_HINT)
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        raise CompilationError("convert", f"TensorFlow cannot load the SavedModel: {_first_line(exc)}",
                               SAVE_HINT) from None
    keys = sorted(loaded.signatures.keys())
    key = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in keys else (keys[0] if len(keys) == 1 else None)
    if key is None:
        raise CompilationError("convert", f"the SavedModel has no {DEFAULT_SIGNATURE!r} signature (it has {keys}).",
                               "save it with signatures={'serving_default': fn}.")
    signature = loaded.signatures[key]
    specs = signature.structured_input_signature[1]
    declared = [(name, tuple(s.shape) if s.shape.rank is not None else None) for name, s in specs.items()]
    return _Source([signature], declared, None, f"tf.saved_model.load(...).signatures[{key!r}]",
                   converters={"tensorflow": tf.__version__}, keepalive=loaded)


def _name_inputs(inputs: list[CoreMLInput], source: _Source, framework: str) -> list[CoreMLInput]:
    """Every input with its Core ML name. PyTorch: by position (input0..); TF/Keras: must be a model input."""
    if framework == "PYTORCH":
        if not inputs and not source.static:
            raise ValidationError(FIELD, "PyTorch models need DataInputConfig: TorchScript files do not record "
                                  "input shapes; e.g. [{\"shape\": [1,3,224,224]}]")
        if source.static:
            inputs = inputs or [CoreMLInput(None, shape) for _, shape in source.declared]  # type: ignore[misc]
            if len(inputs) != len(source.declared):
                raise ValidationError(FIELD, f"the exported program takes {len(source.declared)} input(s), "
                                      f"DataInputConfig gives {len(inputs)}")
        return [replace(i, name=i.name or f"input{k}") for k, i in enumerate(inputs)]
    known = {name: shape for name, shape in source.declared}
    for i in inputs:
        if i.name not in known:
            raise ValidationError(f"{FIELD}.{i.name}", f"the model has no input named {i.name!r}; its inputs are "
                                  f"{sorted(known)}")
    given = {i.name for i in inputs}
    # Inputs not given keep the model's shape with open dimensions fixed at 1: left open, coremltools
    # would make them a silent 1..2 range.
    rest = [CoreMLInput(n, tuple(d or 1 for d in (s or ()))) for n, s in source.declared if n not in given]
    return [_channels_last(i) if i.image else i for i in inputs] + [r for r in rest if r.shape]


def _channels_last(entry: CoreMLInput) -> CoreMLInput:
    """TF/Keras images are NHWC; AWS's image example is NCHW [1,3,H,W]: read such a shape as NCHW."""
    shape = entry.shape
    channels = 1 if entry.color_layout == "GRAYSCALE" else 3
    if shape and len(shape) == 4 and shape[1] == channels and shape[3] != channels:
        return replace(entry, shape=(shape[0], shape[2], shape[3], shape[1]))
    return entry


def _ct_inputs(ct, inputs: list[CoreMLInput], source: _Source, framework: str) -> list:
    if source.static and any(i.range_dims or i.enumerated for i in inputs):
        raise ValidationError(FIELD, "a torch.export .pt2 program has the static shapes it was exported with; "
                              "shape ranges and enumerated shapes need a TorchScript .pt model")
    channel_first = None if framework == "PYTORCH" else False
    result = []
    for i in inputs:
        if i.range_dims is not None:
            shape: Any = tuple(lo if lo == hi else ct.RangeDim(lo, hi, default=lo) for lo, hi in i.range_dims)
        elif i.enumerated is not None:
            shape = ct.EnumeratedShapes(shapes=[list(s) for s in i.enumerated], default=list(i.default_shape or ()))
        else:
            shape = i.shape
        if i.image:
            bias = list(i.bias) if len(i.bias) > 1 else (i.bias[0] if i.bias else 0.0)
            result.append(ct.ImageType(name=i.name, shape=shape, bias=bias, scale=i.scale,
                                       color_layout=getattr(ct.colorlayout, i.color_layout),
                                       channel_first=channel_first))
        else:
            result.append(ct.TensorType(name=i.name, shape=shape))
    return result


def _run_convert(ct, source: _Source, ct_inputs: list, classifier) -> Any:
    from modelkiln.frontends.tf_common import stderr_silenced
    kwargs: dict[str, Any] = {"convert_to": "mlprogram",
                              "minimum_deployment_target": getattr(ct.target, DEPLOYMENT_TARGET),
                              "classifier_config": classifier, "inputs": ct_inputs or None}
    if source.route.startswith(("keras", "tf.")):  # coremltools cannot tell a Keras 3 model's framework
        kwargs["source"] = "tensorflow"
    try:
        with stderr_silenced():  # progress bars and per-pass warnings
            return ct.convert(source.model, **kwargs)
    except (ValidationError, CompilationError):
        raise
    except Exception as exc:
        if classifier is not None and "number of classes must match" in str(exc):
            count = len(classifier.class_labels)
            raise CompilationError("convert", f"{LABELS_FIELD} gives {count} labels but the model's "
                                   "output has a different number of scores.",
                                   "give exactly one label per output score.") from None
        raise _conversion_error(exc) from None


def _conversion_error(exc: BaseException) -> CompilationError:
    """coremltools' exception as a typed error, naming the operator when coremltools does."""
    text = _first_line(exc)
    op = re.search(r"op ['\"`]?([\w.:]+)['\"`]?|Torch `([\w.:]+)`|(?:Op|op) type ['\"]?([\w.]+)", text)
    name = next((g for g in op.groups() if g), None) if op else None
    if isinstance(exc, NotImplementedError) or name or "not implemented" in text.lower():
        what = f"operator {name!r}" if name else "an operator"
        return CompilationError("convert", f"coremltools cannot convert {what}: {text}",
                                "replace that operation with one Core ML supports, or register a coremltools "
                                "composite operator for it.")
    if "not found in given tensorflow graph" in text or "inconsistent shape" in text or "channel" in text:
        return CompilationError("convert", f"coremltools rejected the input description: {text}",
                                f"make {FIELD} match the model's inputs (names, and shapes in the model's layout).")
    return CompilationError("convert", f"coremltools could not convert the model ({type(exc).__name__}): {text}",
                            "check that the model runs in its framework with the DataInputConfig shapes.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- spec reading

def _classify_op(spec) -> Any:
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type == "classify":
                    return op, block
    return None, None


def _spec_labels(spec) -> list[str] | None:
    """The class labels an ML Program's classify op holds (ML Programs keep them in the program)."""
    op, _ = _classify_op(spec)
    if op is None:
        return None
    values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
    return [v.immediateValue.tensor.strings.values[0] for v in values]


def _check_label_count(spec, labels: list[str]) -> None:
    """coremltools checks the label count only when the scores' shape is fully static (with a flexible
    batch it accepts any count): the probabilities' last dimension must match."""
    op, block = _classify_op(spec)
    if op is None:
        return
    probs = op.inputs["probabilities"].arguments[0].name
    for other in block.operations:
        for out in other.outputs:
            if out.name == probs:
                dims = out.type.tensorType.dimensions
                if dims and dims[-1].WhichOneof("dimension") == "constant":
                    size = dims[-1].constant.size
                    if size != len(labels):
                        raise CompilationError(
                            "convert", f"{LABELS_FIELD} gives {len(labels)} labels but the model outputs {size} "
                                       "scores.", f"give exactly {size} labels, one per output score.")
                return


def _features(features) -> list[dict]:
    return [_feature(f) for f in features]


def _feature(f) -> dict:
    kind = f.type.WhichOneof("Type")
    meta: dict[str, Any] = {"name": f.name, "type": kind}
    if kind == "multiArrayType":
        a = f.type.multiArrayType
        meta["shape"] = list(a.shape)
        meta["dtype"] = _ARRAY_DTYPES.get(a.dataType, str(a.dataType))
        flex = a.WhichOneof("ShapeFlexibility")
        if flex == "shapeRange":
            meta["shape_range"] = [[r.lowerBound, r.upperBound] for r in a.shapeRange.sizeRanges]
        elif flex == "enumeratedShapes":
            meta["enumerated_shapes"] = [list(s.shape) for s in a.enumeratedShapes.shapes]
    elif kind == "imageType":
        img = f.type.imageType
        meta.update(width=img.width, height=img.height, color_space=_COLOR_SPACES.get(img.colorSpace, "?"))
    return meta


_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32"}
_COLOR_SPACES = {10: "GRAYSCALE", 20: "RGB", 30: "BGR"}


def _notes(inputs: list[CoreMLInput], source: _Source, labels: list[str] | None) -> list[str]:
    notes = [f"converted with coremltools to an ML Program (minimum deployment target {DEPLOYMENT_TARGET}, "
             "float16 compute precision, coremltools' default for ML Programs) from " + source.route + "."]
    for i in inputs:
        if i.range_dims is not None:
            notes.append(f"{i.name}: flexible shape {[f'{lo}..{hi}' if lo != hi else lo for lo, hi in i.range_dims]}.")
        if i.enumerated is not None:
            notes.append(f"{i.name}: enumerated shapes {[list(s) for s in i.enumerated]}, default "
                         f"{list(i.default_shape or ())}.")
        if i.image:
            notes.append(f"{i.name}: image input ({i.color_layout}), pixel * {i.scale} + {list(i.bias)}.")
    if labels:
        notes.append(f"classifier with {len(labels)} labels: outputs classLabel and classLabel_probs.")
    notes.append(PREDICT_NOTE)
    return notes


def _command(source: _Source, inputs: list[CoreMLInput], labels: list[str] | None) -> str:
    parts = []
    for i in inputs:
        kind = "ImageType" if i.image else "TensorType"
        if i.range_dims is not None:
            shape = "(" + ", ".join(str(lo) if lo == hi else f"RangeDim({lo}, {hi})" for lo, hi in i.range_dims) + ")"
        elif i.enumerated is not None:
            shape = f"EnumeratedShapes({[list(s) for s in i.enumerated]}, default={list(i.default_shape or ())})"
        else:
            shape = str(tuple(i.shape or ()))
        extra = f", scale={i.scale}, bias={list(i.bias)}, color_layout={i.color_layout}" if i.image else ""
        parts.append(f"ct.{kind}(name={i.name!r}, shape={shape}{extra})")
    classifier = f", classifier_config=ct.ClassifierConfig({len(labels)} labels)" if labels else ""
    return (f"ct.convert({source.route}, inputs=[{', '.join(parts)}], convert_to='mlprogram', "
            f"minimum_deployment_target=ct.target.{DEPLOYMENT_TARGET}{classifier})")


# ---------------------------------------------------------------------------------------------- validate

def validate(workdir: Path, result: CoreMLResult, inputs: list[CoreMLInput], class_labels) -> str:
    """Re-open the saved package from disk (no prediction: that needs macOS) and check that its spec
    has the inputs, shapes, image types and labels asked for."""
    ct = _import_coremltools()
    path = workdir / result.files[0]
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:
        raise CompilationError("verify", f"{path.name} does not open as a Core ML model: {_first_line(exc)}",
                               "report this model to Kiln's maintainers.") from None
    if spec.WhichOneof("Type") != "mlProgram":
        _mismatch(f"the package holds a {spec.WhichOneof('Type')}, not an ML Program")
    if not spec.description.output:
        _mismatch("the model has no outputs")
    by_name = {f.name: f for f in spec.description.input}
    expected = [replace(i, name=i.name or f"input{k}") for k, i in enumerate(inputs)]
    checked = []
    for i in expected:
        if i.name not in by_name:
            _mismatch(f"input {i.name!r} is missing; the model's inputs are {sorted(by_name)}")
        checked.append(_check_input(by_name[i.name], i))
    labels = _labels_list(class_labels, result)
    found = _spec_labels(spec)
    if labels is not None:
        if found != labels:
            _mismatch(f"class labels are {found}, expected {labels}")
        if not spec.description.predictedFeatureName:
            _mismatch("a classifier must name its predicted feature")
    elif found is not None:
        _mismatch("the model is a classifier although no class_labels were given")
    label_text = f"; {len(labels)} class labels" if labels else ""
    return (f"Core ML spec checked (ML Program, spec v{spec.specificationVersion}): "
            f"{'; '.join(checked) or 'inputs as the model declares them'}; {len(spec.description.output)} "
            f"output(s){label_text}; {PREDICT_NOTE}")


def _labels_list(class_labels, result: CoreMLResult) -> list[str] | None:
    """The labels asked for: the option's list, or (a file name) the labels read from it at convert time."""
    if isinstance(class_labels, list | tuple):
        return [str(x) for x in class_labels] or None
    return result.class_labels if class_labels not in (None, "") else None


def _check_input(feature, i: CoreMLInput) -> str:
    kind = feature.type.WhichOneof("Type")
    if i.image:
        if kind != "imageType":
            _mismatch(f"input {i.name!r} is a {kind}, expected an image")
        img = feature.type.imageType
        space = _COLOR_SPACES.get(img.colorSpace)
        if space != i.color_layout:
            _mismatch(f"input {i.name!r} has color space {space}, expected {i.color_layout}")
        shape = i.build_shape() or ()
        h, w = (shape[2], shape[3]) if shape[1] in (1, 3) and shape[3] not in (1, 3) else (shape[1], shape[2])
        if (img.height, img.width) != (h, w):
            _mismatch(f"input {i.name!r} is a {img.width}x{img.height} image, expected {w}x{h}")
        return f"{i.name}: {w}x{h} {space} image"
    if kind != "multiArrayType":
        _mismatch(f"input {i.name!r} is a {kind}, expected a tensor")
    array = feature.type.multiArrayType
    flex = array.WhichOneof("ShapeFlexibility")
    if i.range_dims is not None:
        ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
        if flex != "shapeRange" or ranges != list(i.range_dims):
            _mismatch(f"input {i.name!r} has ranges {ranges or flex}, expected {list(i.range_dims)}")
        return f"{i.name}: range {[f'{lo}..{hi}' for lo, hi in ranges]}"
    if i.enumerated is not None:
        shapes = {tuple(s.shape) for s in array.enumeratedShapes.shapes}
        if flex != "enumeratedShapes" or shapes != set(i.enumerated):
            _mismatch(f"input {i.name!r} has shapes {sorted(shapes) or flex}, expected {list(i.enumerated)}")
        if tuple(array.shape) != i.default_shape:
            _mismatch(f"input {i.name!r} defaults to {list(array.shape)}, expected {list(i.default_shape or ())}")
        return f"{i.name}: {len(shapes)} enumerated shapes"
    if tuple(array.shape) != i.shape or flex is not None:
        _mismatch(f"input {i.name!r} has shape {list(array.shape)} ({flex or 'fixed'}), "
                  f"expected {list(i.shape or ())}")
    return f"{i.name}: {list(i.shape or ())}"


def _mismatch(message: str) -> None:
    raise CompilationError("verify", f"the Core ML package does not match the request: {message}.",
                           "report this model to Kiln's maintainers.")

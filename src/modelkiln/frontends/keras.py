"""Keras frontend: one .h5 (Keras 3, or Keras 2 where Keras 3 reads it) or .keras file, converted with
tf2onnx. Reference: Keras running the model on TensorFlow.

AWS documents Keras DataInputConfig in NCHW ({"input_1": [1,3,224,224]}) although Keras models are
channels-last. A 4-D shape that fits the model only when read as NCHW makes the compiled model take
NCHW: tf2onnx puts a Transpose in front of that input. A shape that fits as written (the model's own
NHWC) is kept as written. Inputs are matched by their Keras names, as Neo (TVM's Keras importer) does.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one
from modelkiln.frontends.input_config import FIELD, parse_data_input_config
from modelkiln.frontends.onnx import output_specs
from modelkiln.frontends.tf_common import (
    OPSET, ModelInput, conversion_failed, convert_function, finish_onnx, first_line, fits, import_tensorflow,
    match_names, stderr_silenced,
)

SAVE_HINT = "save the model with model.save('model.keras') (or 'model.h5') and archive that one file."
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Load the archive's Keras file, fix its input shapes (NCHW or the model's own layout) and convert it."""
    tf = import_tensorflow()
    path, model = load_built_model(model_dir)
    declared = [ModelInput(t.name, tuple(t.shape), np.dtype(t.dtype).name) for t in model.inputs]
    wanted = parse_data_input_config(data_input_config)
    if wanted is None:
        raise ValidationError(FIELD, "Keras models need DataInputConfig (NCHW, as AWS documents), e.g. "
                              + json.dumps({i.name: _nchw_example(i) for i in declared}))
    by_name = match_names(declared, wanted)
    inputs, nchw = [], []  # inputs in the layout the compiled model takes
    for i in declared:
        given = by_name[i.name]
        layout = _layout(i, given.shape)
        inputs.append(TensorSpec(i.name, given.shape, i.dtype))
        if layout == "NCHW":
            nchw.append(i.name)
    keras_shapes = [tuple(s.shape[k] for k in TO_NHWC) if s.name in nchw else s.shape for s in inputs]

    structure = model.input  # a Keras 2 file's single input is a one-element list: call it the way it was built
    position = {s.name: k for k, s in enumerate(inputs)}

    def call(args):
        ordered = [args[position[t.name]] for t in tf.nest.flatten(structure)]
        return model(tf.nest.pack_sequence_as(structure, ordered), training=False)

    def reference(feeds: Feeds) -> list[np.ndarray]:
        args = [np.transpose(feeds[s.name], TO_NHWC) if s.name in nchw else feeds[s.name] for s in inputs]
        return [np.asarray(t) for t in tf.nest.flatten(call([tf.constant(a) for a in args]))]

    outputs = output_specs(reference, inputs, _output_names(model))
    tf_specs = [tf.TensorSpec(shape, s.dtype, name=s.name) for s, shape in zip(inputs, keras_shapes)]
    try:
        with stderr_silenced():
            onnx_model = convert_function(tf.function(lambda *a: call(a), input_signature=tf_specs), tf_specs, nchw)
    except Exception as exc:
        raise conversion_failed("tf2onnx", exc, "replace the failing layer with standard Keras layers.") from None
    return ConvertedModel(
        onnx_model=finish_onnx(onnx_model, inputs, outputs, "tf2onnx"), inputs=inputs, outputs=outputs,
        reference=reference, framework="KERAS", framework_version=_keras_version(path),
        converters=_converters(tf), notes=_notes(inputs, nchw),
    )


def load_built_model(model_dir: Path):
    """(path, model): the archive's one Keras file, loaded; a model that was never built (no inputs) is refused."""
    path = exactly_one(model_dir, (".h5", ".hdf5", ".keras"), "Keras")
    model = _load_keras(path)
    if not getattr(model, "inputs", None):
        raise CompilationError("convert", f"{path.name} holds a model that was never built, so it has no inputs.",
                               "build it (call it once, or start it with keras.Input) before saving.")
    return path, model


def _load_keras(path: Path):
    import keras

    class Keras2DepthwiseConv2D(keras.layers.DepthwiseConv2D):
        """Keras 2 wrote `groups` into DepthwiseConv2D's config (always 1); Keras 3 refuses the key."""

        def __init__(self, *args: Any, groups: int = 1, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    try:
        with stderr_silenced():
            return keras.models.load_model(str(path), compile=False,
                                           custom_objects={"DepthwiseConv2D": Keras2DepthwiseConv2D})
    except Exception as exc:
        raise CompilationError(
            "convert", f"Keras {keras.__version__} cannot load {path.name}: {first_line(exc)}",
            SAVE_HINT + " Custom layers cannot be compiled: Kiln has no code for them.",
        ) from None


def _layout(declared: ModelInput, shape: tuple[int, ...]) -> str:
    """NCHW when the shape fits the channels-last model only as NCHW (or either way: AWS's documented
    form wins); the model's own layout when it fits as written. ValidationError otherwise."""
    if len(shape) == 4 and fits(declared.shape, tuple(np.array(shape)[list(TO_NHWC)])):
        return "NCHW"
    if fits(declared.shape, shape):
        return "model"
    raise ValidationError(
        f"{FIELD}.{declared.name}",
        f"shape {list(shape)} fits the model's input {declared.name} "
        f"{[d if d is not None else '?' for d in declared.shape or ()]} neither as NCHW nor as written; "
        f"e.g. {_nchw_example(declared)} (NCHW) or {declared.example()} (the model's own layout)",
    )


def _nchw_example(declared: ModelInput) -> list[int]:
    dims = declared.example()
    return [dims[i] for i in TO_NCHW] if len(dims) == 4 else dims


def _output_names(model) -> list[str] | None:
    if isinstance(model.output, dict):  # tf.nest flattens dicts in key order
        return sorted(model.output)
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == len(model.outputs) and len(set(names)) == len(names) else None


def _keras_version(path: Path) -> str | None:
    """The Keras version that saved the file: .h5 root attribute keras_version, .keras metadata.json."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("metadata.json")).get("keras_version")
        import h5py
        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version")
        return version.decode() if isinstance(version, bytes) else (str(version) if version is not None else None)
    except Exception:  # the file loaded; a missing version record is no reason to fail the job
        return None


def _notes(inputs: list[TensorSpec], nchw: list[str]) -> list[str]:
    layout = "; ".join(f"{s.name} {list(s.shape)} {'NCHW' if s.name in nchw else 'as the model declares it'}"
                       for s in inputs)
    notes = [f"Keras model converted to ONNX opset {OPSET} with tf2onnx. The compiled model takes: {layout}."]
    if nchw:
        notes.append("DataInputConfig gave NCHW shapes for a channels-last model, as AWS documents for Keras: "
                     "the compiled model transposes those inputs to NHWC itself; feed it NCHW arrays.")
    notes.append("inputs are matched by their Keras input names, as Neo does; no name is guessed.")
    return notes


def _converters(tf) -> dict[str, str]:
    import keras
    import onnx
    import tf2onnx
    return {"keras": keras.__version__, "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__}

"""TFLite frontend: one .tflite flatbuffer (float, or int8-quantized), converted with tf2onnx.
Reference: the LiteRT interpreter (ai-edge-litert) running the file.

Quantized models stay quantized: tf2onnx writes TFLite's int8 arithmetic as QuantizeLinear/
DequantizeLinear around float ops, and int8 inputs/outputs stay int8 in the compiled model.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one
from modelkiln.frontends.input_config import parse_data_input_config
from modelkiln.frontends.tf_common import (
    OPSET, ModelInput, conversion_failed, finish_onnx, first_line, import_tf2onnx, match_names, static_inputs,
    stderr_silenced, strip_port,
)

SAVE_HINT = "convert the model with tf.lite.TFLiteConverter and archive the .tflite file."
SIGNATURE_PREFIX = "serving_default_"  # what TFLiteConverter prefixes to a SavedModel/Keras input's name


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Load the archive's .tflite file, fix its input shapes (NHWC, as TFLite takes them) and convert it.

    Input dtypes come from the flatbuffer, so CompilerOptions DTYPE is not needed here."""
    path = exactly_one(model_dir, (".tflite",), "TFLite")
    interpreter = _interpreter(path)
    in_details, out_details = interpreter.get_input_details(), interpreter.get_output_details()
    declared = [ModelInput(strip_port(d["name"]), _dims(d), np.dtype(d["dtype"]).name) for d in in_details]
    wanted = parse_data_input_config(data_input_config)
    if wanted is not None:
        # "image" for "serving_default_image:0": users know inputs by the name they gave them in Keras/TF.
        aliases = {d.name[len(SIGNATURE_PREFIX):]: d.name for d in declared if d.name.startswith(SIGNATURE_PREFIX)}
        by_name = match_names(declared, wanted, aliases)
        wanted = [TensorSpec(name, spec.shape, spec.dtype) for name, spec in by_name.items()]
    notes = []
    if wanted is None:  # the flatbuffer records the shape its interpreter allocates (batch 1 as converted)
        wanted = [TensorSpec(i.name, tuple(int(x) for x in d["shape"]), i.dtype) for i, d in zip(declared, in_details)]
        notes.append("no DataInputConfig: compiled for the input shapes the .tflite file records, "
                     + ", ".join(f"{w.name} {list(w.shape)}" for w in wanted) + ".")
    inputs = static_inputs(declared, wanted, "TFLite")
    for detail, spec in zip(in_details, inputs):
        if tuple(detail["shape"]) != spec.shape:
            interpreter.resize_tensor_input(detail["index"], list(spec.shape), strict=True)
    interpreter.allocate_tensors()

    onnx_model = _convert(path, in_details, inputs)
    # tf2onnx keeps TFLite's tensor names: line our inputs and outputs up with the ONNX graph's order.
    order = [strip_port(v.name) for v in onnx_model.graph.input]
    inputs = sorted(inputs, key=lambda s: order.index(s.name) if s.name in order else len(order))
    out_order = [strip_port(v.name) for v in onnx_model.graph.output]
    out_details = sorted(out_details, key=lambda d: out_order.index(strip_port(d["name"]))
                         if strip_port(d["name"]) in out_order else len(out_order))
    index = {strip_port(d["name"]): d["index"] for d in in_details}

    def reference(feeds: Feeds) -> list[np.ndarray]:
        for spec in inputs:
            interpreter.set_tensor(index[spec.name], np.ascontiguousarray(feeds[spec.name]))
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]).copy() for d in out_details]

    outputs = [TensorSpec(strip_port(d["name"]), tuple(int(x) for x in interpreter.get_tensor(d["index"]).shape),
                          np.dtype(d["dtype"]).name) for d in out_details]
    quantized = [s.name for s in (*inputs, *outputs) if np.dtype(s.dtype).kind in "iu"]
    return ConvertedModel(
        onnx_model=finish_onnx(onnx_model, inputs, outputs, "tf2onnx (TFLite)"), inputs=inputs, outputs=outputs,
        reference=reference, framework="TFLITE", framework_version=_min_runtime_version(path),
        converters=_converters(), notes=notes + _notes(onnx_model, quantized),
    )


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter
    try:
        with stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter = Interpreter(model_path=str(path))
            interpreter.allocate_tensors()
    except Exception as exc:
        raise CompilationError("convert", f"{path.name} is not a TFLite model the LiteRT interpreter can load "
                               f"({first_line(exc)}).", SAVE_HINT) from None
    return interpreter


def _convert(path: Path, in_details: list[dict], inputs: list[TensorSpec]):
    tf2onnx = import_tf2onnx()
    shapes = {d["name"]: list(s.shape) for d, s in zip(in_details, inputs)}
    try:
        with stderr_silenced():
            model, _ = tf2onnx.convert.from_tflite(str(path), opset=OPSET, shape_override=shapes)
    except Exception as exc:
        raise conversion_failed("tf2onnx", exc, "rebuild the model with TFLite builtin operators only.") from None
    return model


def _dims(detail: dict) -> tuple[int | None, ...]:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return tuple(int(d) if d >= 0 else None for d in dims)


def _min_runtime_version(path: Path) -> str | None:
    """The flatbuffer's min_runtime_version metadata: the oldest TFLite runtime that runs the file."""
    try:
        import_tf2onnx()  # the flatbuffer reader lives in tf2onnx, whose import loads TensorFlow: quietly
        from tf2onnx.tflite.Model import Model
        data = path.read_bytes()
        model = Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == b"min_runtime_version":
                raw = bytes(model.Buffers(entry.Buffer()).DataAsNumpy())
                return "min runtime " + raw.split(b"\0")[0].decode()
    except Exception:  # the interpreter loaded the file; a missing record is no reason to fail
        return None
    return None


def _notes(model, quantized: list[str]) -> list[str]:
    notes = [f"TFLite flatbuffer converted to ONNX opset {OPSET} with tf2onnx; inputs and outputs keep the "
             "TFLite tensor names (without ':0') and layout (NHWC for image models)."]
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        notes.append("the model is quantized: the compiled model keeps its int8 arithmetic as "
                     "QuantizeLinear/DequantizeLinear, checked against the LiteRT interpreter's int8 kernels.")
    if quantized:
        notes.append(f"{', '.join(quantized)} are integer (quantized) tensors: feed and read them in the "
                     "model's quantized scale and zero point, as with the .tflite file.")
    return notes


def _converters() -> dict[str, str]:
    from importlib.metadata import version
    return {"ai-edge-litert": version("ai-edge-litert"), "tf2onnx": version("tf2onnx"), "onnx": version("onnx")}

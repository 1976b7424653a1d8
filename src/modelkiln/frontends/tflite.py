"""TFLite frontend: one .tflite flatbuffer (float, or int8-quantized), converted with tf2onnx.
Reference: the LiteRT interpreter (ai-edge-litert) running the file.

Dynamic-range (weight-only) quantized models (int8 weights, float activations) mean float arithmetic on their
dequantized weights: tf2onnx converts, and LiteRT runs for the reference, the file's float twin (each int8 weight
stored as its float values). LiteRT's hybrid kernels on the file itself, which also quantize activations on the
fly, are run once and their distance from the twin noted.

Full-integer quantized models stay quantized: tf2onnx writes TFLite's int8 arithmetic as QuantizeLinear/
DequantizeLinear around float ops, and int8 inputs/outputs stay int8 in the compiled model. Quantized
outputs (and float outputs dequantized from int8) carry their scale and zero point, and are verified
within whole quantization steps.

Sparse constants are made dense for tf2onnx. MediaPipe's custom operators (tflite_custom_ops) are
converted by Kiln's handlers. LiteRT's XNNPACK delegate runs them for the reference where it takes their
options; where it declines (e.g. overlapping pooling windows, a fused activation), the reference is LiteRT
running the model cut around them, with Kiln's numpy kernels for them in between.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.errors import CompilationError
from modelkiln.frontends import tflite_flatbuffer as fb
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one
from modelkiln.frontends.input_config import parse_data_input_config
from modelkiln.frontends.tf_common import (
    OPSET, ModelInput, conversion_failed, finish_onnx, first_line, import_tf2onnx, match_names, static_inputs,
    stderr_silenced, strip_port,
)
from modelkiln.frontends.tflite_custom_onnx import handlers
from modelkiln.frontends.tflite_custom_ops import KERNELS, Options, parse_options

SAVE_HINT = "convert the model with tf.lite.TFLiteConverter and archive the .tflite file."
SIGNATURE_PREFIX = "serving_default_"  # what TFLiteConverter prefixes to a SavedModel/Keras input's name


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Load the archive's .tflite file, fix its input shapes (NHWC, as TFLite takes them) and convert it.

    Input dtypes come from the flatbuffer, so CompilerOptions DTYPE is not needed here."""
    path = exactly_one(model_dir, (".tflite",), "TFLite")
    data = path.read_bytes()
    flat = _flatbuffer(path, data)
    hybrid = len(fb.hybrid_weights(flat))
    twin = fb.float_twin(data) if hybrid else data  # reference and conversion both: float on the int8 weights' values
    sparse = fb.densify(flat)  # tf2onnx cannot read sparse constants; LiteRT runs the original file
    customs = _known_custom_ops(flat)
    ref_flat = fb.read_model(twin) if hybrid else flat  # the model LiteRT runs for the reference
    interpreter, cut, declined = _interpreter(path, twin, ref_flat, customs)
    by_index = {d["index"]: d for d in [*interpreter.get_input_details(), *interpreter.get_output_details()]}
    in_details = [by_index[int(i)] for i in flat.subgraphs[0].inputs]
    out_details = [by_index[int(i)] for i in flat.subgraphs[0].outputs]
    inputs, notes = _input_specs(in_details, data_input_config)
    inputs = [replace(s, quantization=fb.quantization(flat, d["index"])) for s, d in zip(inputs, in_details)]
    _allocate(path, interpreter, in_details, inputs, customs if cut else [])

    onnx_model = _convert(twin if hybrid else fb.write_model(flat) if sparse else data, in_details, inputs, customs)
    # tf2onnx keeps TFLite's tensor names: line our inputs and outputs up with the ONNX graph's order.
    order = [strip_port(v.name) for v in onnx_model.graph.input]
    inputs = sorted(inputs, key=lambda s: order.index(s.name) if s.name in order else len(order))
    out_names = _output_names([d["name"] for d in out_details])
    position: dict[str, int] = {}
    for i, value in enumerate(onnx_model.graph.output):  # by its name, with or without the port
        position.setdefault(value.name, i)
        position.setdefault(strip_port(value.name), i)
    out_details = sorted(out_details, key=lambda d: position.get(d["name"], position.get(strip_port(d["name"]),
                                                                                         len(position))))
    index = {strip_port(d["name"]): d["index"] for d in in_details}
    quantization = {d["index"]: fb.quantization(flat, d["index"]) for d in out_details}
    run = _staged_run(interpreter, ref_flat, cut, customs) if cut else _plain_run(interpreter, out_details)

    def reference(feeds: Feeds) -> list[np.ndarray]:
        values = run({index[s.name]: np.ascontiguousarray(feeds[s.name]) for s in inputs})
        return [values[d["index"]] for d in out_details]

    # Output shapes from one run: a dynamic tensor (an LSTM's, a resized one's) has no data before invoke.
    shapes = [o.shape for o in reference({s.name: np.zeros(s.shape, s.dtype) for s in inputs})]
    outputs = [TensorSpec(out_names[d["name"]], tuple(int(x) for x in shape), np.dtype(d["dtype"]).name,
                          quantization[d["index"]]) for d, shape in zip(out_details, shapes)]
    quantized = [s.name for s in (*inputs, *outputs) if np.dtype(s.dtype).kind in "iu"]
    notes += _custom_notes(customs, declined if cut else None, sparse) + _quantization_notes(outputs)
    if hybrid:
        gap = _hybrid_gap(path, data, in_details, inputs, [d["index"] for d in out_details], reference)
        notes.append(_hybrid_note(hybrid, gap))
    return ConvertedModel(
        onnx_model=finish_onnx(onnx_model, inputs, outputs, "tf2onnx (TFLite)"), inputs=inputs, outputs=outputs,
        reference=reference, framework="TFLITE", framework_version=_min_runtime_version(path),
        converters=_converters(), notes=notes + _notes(onnx_model, quantized, bool(hybrid)),
    )


def _hybrid_gap(path: Path, data: bytes, in_details: list[dict], inputs: list[TensorSpec], outputs: list[int],
                reference: Callable[[Feeds], list[np.ndarray]]) -> float | str:
    """Max relative distance of LiteRT's hybrid kernels (the file as is) from the float twin's reference, on a
    sample drawn here (standard normal, the float inputs' draw); or why LiteRT could not run the file."""
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in inputs}
    try:
        interpreter = _litert(data)
        _allocate(path, interpreter, in_details, inputs, [])
        index = {strip_port(d["name"]): d["index"] for d in in_details}
        got = _plain_run(interpreter, [{"index": i} for i in outputs])(
            {index[s.name]: np.ascontiguousarray(feeds[s.name]) for s in inputs})
    except Exception as exc:  # the note says so; the reference does not depend on this run
        return first_line(exc)
    gap = 0.0
    for i, want in zip(outputs, reference(feeds)):
        want64 = want.astype(np.float64)
        scale = max(float(np.abs(want64).max()) if want64.size else 0.0, 1e-6)  # as verify's relative error
        gap = max(gap, float(np.abs(got[i].astype(np.float64) - want64).max(initial=0.0)) / scale)
    return gap


def _hybrid_note(weights: int, gap: float | str) -> str:
    note = (f"dynamic-range (weight-only) quantized model: {weights} int8 weight tensor(s), float activations. The "
            "reference is LiteRT running the model with those weights dequantized (scale * (q - zero point), per "
            "channel where the file has per-channel scales), i.e. float kernels on the values the weights mean, "
            "which is what the compiled model computes; ")
    if isinstance(gap, str):
        return note + f"LiteRT could not run the file's hybrid kernels for comparison ({gap})."
    return note + (f"LiteRT's hybrid kernels, which also quantize activations on the fly, give results {gap:.1e} "
                   "(relative) from this float computation on a drawn sample.")


def _input_specs(in_details: list[dict], data_input_config: str | None) -> tuple[list[TensorSpec], list[str]]:
    """(static input specs, notes): DataInputConfig's shapes checked against the file's, or the file's own."""
    declared = [ModelInput(strip_port(d["name"]), _dims(d), np.dtype(d["dtype"]).name) for d in in_details]
    wanted = parse_data_input_config(data_input_config)
    if wanted is not None:
        # "image" for "serving_default_image:0": users know inputs by the name they gave them in Keras/TF.
        aliases = {d.name[len(SIGNATURE_PREFIX):]: d.name for d in declared if d.name.startswith(SIGNATURE_PREFIX)}
        by_name = match_names(declared, wanted, aliases)
        return static_inputs(declared, [TensorSpec(n, s.shape, s.dtype) for n, s in by_name.items()], "TFLite"), []
    # the flatbuffer records the shape its interpreter allocates (batch 1 as converted)
    wanted = [TensorSpec(i.name, tuple(int(x) for x in d["shape"]), i.dtype) for i, d in zip(declared, in_details)]
    return static_inputs(declared, wanted, "TFLite"), [
        "no DataInputConfig: compiled for the input shapes the .tflite file records, "
        + ", ".join(f"{w.name} {list(w.shape)}" for w in wanted) + "."]


def _allocate(path: Path, interpreter, in_details: list[dict], inputs: list[TensorSpec], kiln_run: list) -> None:
    """Resize the interpreter's inputs to the specs; kiln_run: custom operators Kiln's kernels compute, whose
    outputs are fed at the shapes the file records, so the inputs must keep theirs."""
    for detail, spec in zip(in_details, inputs):
        if tuple(detail["shape"]) != spec.shape:
            if kiln_run:
                raise CompilationError("convert", f"{path.name} uses custom operator(s) {_names(kiln_run)}, which "
                                       "LiteRT cannot run here and Kiln runs only at the input shapes the file "
                                       f"records ({spec.name} {list(detail['shape'])}).",
                                       "leave DataInputConfig out, or give the recorded shapes.")
            interpreter.resize_tensor_input(detail["index"], list(spec.shape), strict=True)
    interpreter.allocate_tensors()


def _known_custom_ops(flat) -> list["CustomOp"]:
    """The model's custom operators Kiln converts (MediaPipe's), with their options."""
    return [CustomOp(op, fb.opcode_name(flat, op), fb.tensor_name(flat, int(op.outputs[0])),
                     parse_options(fb.opcode_name(flat, op), _raw(op)))
            for op in fb.custom_ops(flat) if fb.opcode_name(flat, op) in KERNELS]


@dataclass(frozen=True)
class CustomOp:
    """A custom operator of the model that Kiln converts (and runs, where LiteRT cannot; see tflite_custom_ops)."""

    op: Any  # the flatbuffer's OperatorT
    name: str
    output: str  # its first output tensor's name: what tf2onnx names its node
    options: Options


def _raw(op) -> bytes | None:
    return None if op.customOptions is None else bytes(np.asarray(op.customOptions, np.uint8))


def _names(customs: list[CustomOp]) -> str:
    return ", ".join(sorted({c.name for c in customs}))


def _flatbuffer(path: Path, data: bytes):
    try:
        return fb.read_model(data)
    except Exception as exc:
        raise CompilationError("convert", f"{path.name} is not a TFLite model the LiteRT interpreter can load "
                               f"({first_line(exc)}).", SAVE_HINT) from None


def _output_names(names: list[str]) -> dict[str, str]:
    """TFLite tensor name -> Kiln's output name: without its ":N" port, unless two outputs would then share one
    (a SavedModel's StatefulPartitionedCall:0, :1, ... all end up as outputs)."""
    stripped = [strip_port(n) for n in names]
    return {n: s if stripped.count(s) == 1 else n for n, s in zip(names, stripped)}


def _interpreter(path: Path, data: bytes, flat, customs: list[CustomOp]) -> tuple[Any, fb.CutModel | None, str]:
    """(interpreter, cut, why): LiteRT on the file (its XNNPACK delegate runs MediaPipe's operators where it takes
    their options); where it cannot, LiteRT on the model cut around the MediaPipe operators Kiln runs itself
    (why: LiteRT's error). Custom operators neither can run leave no reference: refused, naming them."""
    try:
        return _litert(data), None, ""
    except Exception as exc:
        error = first_line(exc)
    if customs:
        cut = fb.cut_custom_ops(flat, set(KERNELS))
        try:
            return _litert(cut.data), cut, error
        except Exception as exc:
            error = first_line(exc)
    unknown = sorted({fb.opcode_name(flat, op) for op in fb.custom_ops(flat)} - set(KERNELS))
    if unknown:
        raise CompilationError(
            "convert", f"{path.name} uses custom operator(s) {', '.join(unknown)} that the LiteRT interpreter has no "
            "kernel for (the app that ships such a model registers its own), so there is no reference to check a "
            f"compiled model against ({error}).",
            "rebuild those layers from TFLite builtin operators. Kiln itself converts and runs only MediaPipe's "
            f"{', '.join(sorted(KERNELS))}.")
    raise CompilationError("convert", f"{path.name} is not a TFLite model the LiteRT interpreter can load ({error})"
                           + (f", even without its custom operator(s) {_names(customs)}." if customs else "."),
                           SAVE_HINT)


def _litert(content: bytes):
    from ai_edge_litert.interpreter import Interpreter
    with stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_content=content)
        interpreter.allocate_tensors()
    return interpreter


def _plain_run(interpreter, out_details: list[dict]) -> Callable[[dict[int, np.ndarray]], dict[int, np.ndarray]]:
    def run(feeds: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        for tensor, value in feeds.items():
            interpreter.set_tensor(tensor, value)
        interpreter.invoke()
        return {d["index"]: interpreter.get_tensor(d["index"]).copy() for d in out_details}
    return run


def _staged_run(interpreter, flat, cut: fb.CutModel, customs: list[CustomOp]
                ) -> Callable[[dict[int, np.ndarray]], dict[int, np.ndarray]]:
    """The reference for a model with custom operators: LiteRT runs the model cut around them once per custom
    operator, and Kiln's numpy kernel computes each from the inputs the run before produced."""
    details = {d["index"]: d for d in interpreter.get_input_details()}
    blank = {t: np.zeros(details[t]["shape"], details[t]["dtype"]) for t in cut.fed}
    constants = {int(t): fb.constant(flat, int(t)) for c in customs for t in c.op.inputs}

    def run(feeds: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        known: dict[int, np.ndarray] = {}
        for step in range(len(customs) + 1):  # each step needs only the custom operators before it
            for tensor, value in {**feeds, **blank, **known}.items():
                interpreter.set_tensor(tensor, value)
            interpreter.invoke()
            if step < len(customs):
                custom = customs[step]
                args = [constants[int(t)] if constants[int(t)] is not None else interpreter.get_tensor(int(t))
                        for t in custom.op.inputs]
                known.update(zip((int(t) for t in custom.op.outputs), KERNELS[custom.name](args, custom.options)))
        return {t: known[t] if t in known else interpreter.get_tensor(t).copy() for t in cut.outputs}
    return run


def _convert(content: bytes, in_details: list[dict], inputs: list[TensorSpec], customs: list[CustomOp]):
    tf2onnx = import_tf2onnx()
    shapes = {d["name"]: list(s.shape) for d, s in zip(in_details, inputs)}
    options, errors = {c.output: (c.name, c.options) for c in customs}, []
    with tempfile.TemporaryDirectory(prefix="kiln-tflite-") as tmp:
        path = Path(tmp) / "model.tflite"  # tf2onnx reads a file
        path.write_bytes(content)
        try:
            with stderr_silenced():
                model, _ = tf2onnx.convert.from_tflite(str(path), opset=OPSET, shape_override=shapes,
                                                       custom_op_handlers=handlers(options, errors) or None)
        except Exception as exc:
            raise conversion_failed("tf2onnx", exc, "rebuild the model with TFLite builtin operators only.") from None
    if errors:  # a custom operator Kiln's handler refused: its reason beats "no conversion for TFL_..."
        raise errors[0]
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


def _custom_notes(customs: list[CustomOp], declined: str | None, sparse: int) -> list[str]:
    notes = []
    if customs and declined is None:
        notes.append(f"custom operator(s) {_names(customs)} (MediaPipe's) converted to standard ONNX operators by "
                     "Kiln; the reference, LiteRT, runs them with its XNNPACK delegate's MediaPipe kernels.")
    elif customs:
        notes.append(f"custom operator(s) {_names(customs)} (MediaPipe's) converted to standard ONNX operators by "
                     f"Kiln. LiteRT cannot run them with these options ({declined}), so the reference is LiteRT "
                     "running the rest of the model, with Kiln's numpy implementation of MediaPipe's kernels for "
                     "them in between.")
    if sparse:
        notes.append(f"{sparse} sparse constant tensor(s) made dense for conversion; the reference ran the file as is.")
    return notes


def _quantization_notes(outputs: list[TensorSpec]) -> list[str]:
    quantized = [f"{o.name} (scale {o.quantization.scale:.6g}, zero point {o.quantization.zero_point})"
                 for o in outputs if o.quantization is not None]
    if not quantized:
        return []
    return [f"quantized output(s) {', '.join(quantized)}: verification allows whole quantization steps of "
            "difference from LiteRT (integer kernels round differently), not a relative tolerance."]


def _notes(model, quantized: list[str], hybrid: bool) -> list[str]:
    notes = [f"TFLite flatbuffer converted to ONNX opset {OPSET} with tf2onnx; inputs and outputs keep the "
             "TFLite tensor names (without ':0') and layout (NHWC for image models)."]
    if hybrid:
        notes.append("the compiled model stores those weights as their float32 values (4x their bytes in the file): "
                     "kept int8 behind DequantizeLinear, onnxruntime would fuse them into 8-bit MatMulNBits, which "
                     "quantizes activations as the hybrid kernels do.")
    elif any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        notes.append("the model is quantized: the compiled model keeps its int8 arithmetic as "
                     "QuantizeLinear/DequantizeLinear, checked against the LiteRT interpreter's int8 kernels.")
    if quantized:
        notes.append(f"{', '.join(quantized)} are integer (quantized) tensors: feed and read them in the "
                     "model's quantized scale and zero point, as with the .tflite file.")
    return notes


def _converters() -> dict[str, str]:
    from importlib.metadata import version
    return {"ai-edge-litert": version("ai-edge-litert"), "tf2onnx": version("tf2onnx"), "onnx": version("onnx")}

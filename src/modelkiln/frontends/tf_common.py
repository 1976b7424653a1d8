"""What the TensorFlow, Keras and TFLite frontends share: a quiet TensorFlow import, matching
DataInputConfig against the model's own inputs, tf.functions frozen and converted with tf2onnx (with
Kiln's handlers for TensorFlow ops tf2onnx lacks), and tf2onnx's output made into Kiln's ONNX."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.base import TensorSpec, fd_silenced
from modelkiln.frontends.input_config import FIELD
from modelkiln.frontends.onnx import MAX_IR_VERSION, STANDARD_DOMAINS

OPSET = 17


@dataclass(frozen=True)
class ModelInput:
    """An input as the source model declares it; None marks a dimension it leaves open."""

    name: str  # without TensorFlow's ":0" port suffix
    shape: tuple[int | None, ...] | None  # None: not even the rank is known (frozen graphs may say nothing)
    dtype: str

    def example(self) -> list[int]:
        return [d or 1 for d in self.shape or (1,)]


def import_tensorflow():
    """tensorflow, imported with its C++ start-up chatter kept off the user's terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with stderr_silenced():  # absl writes "All log messages before absl::InitializeLog()" whatever the level
            import tensorflow  # noqa: F401
    import tensorflow as tf
    tf.get_logger().setLevel(logging.ERROR)
    return tf


def import_tf2onnx():
    """tf2onnx, logging only errors (its INFO lines describe every optimizer pass)."""
    import_tensorflow()
    import tf2onnx
    tf2onnx.logging.set_level(logging.ERROR)
    return tf2onnx


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Native libraries print straight to fd 2; Python warnings are silenced too. Our errors say what matters."""
    with fd_silenced(2), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def strip_port(name: str) -> str:
    """TensorFlow tensor names carry an output index (":0"); users write them with or without it."""
    head, sep, port = name.rpartition(":")
    return head if sep and port.isdigit() else name


def config_example(inputs: list[ModelInput]) -> str:
    return json.dumps({i.name: i.example() for i in inputs})


def match_names(declared: list[ModelInput], wanted: list[TensorSpec], aliases: dict[str, str] | None = None
                ) -> dict[str, TensorSpec]:
    """Model input name -> the DataInputConfig entry for it; every input named once, by its own name
    (":0" optional; aliases maps further accepted spellings to model names). Raises ValidationError."""
    known = {i.name for i in declared}
    aliases = aliases or {}
    by_name: dict[str, TensorSpec] = {}
    unknown = []
    for spec in wanted:
        name = strip_port(spec.name)
        name = name if name in known else aliases.get(name, aliases.get(spec.name, name))
        if name not in known:
            unknown.append(spec.name)
        by_name[name] = spec
    missing = [i.name for i in declared if i.name not in by_name]
    if unknown or missing:
        raise ValidationError(
            FIELD,
            f"names {[w.name for w in wanted]} but the model's inputs are {sorted(known)}"
            + (f" (unknown: {unknown})" if unknown else "") + (f" (missing: {missing})" if missing else "")
            + f"; e.g. {config_example(declared)}",
        )
    return by_name


def fits(model_shape: tuple[int | None, ...] | None, shape: tuple[int, ...]) -> bool:
    """True when shape is one the model accepts: same rank, equal wherever the model fixes a size."""
    if model_shape is None:
        return True
    return len(model_shape) == len(shape) and all(m is None or m == s for m, s in zip(model_shape, shape))


def static_inputs(declared: list[ModelInput], wanted: list[TensorSpec] | None, framework: str) -> list[TensorSpec]:
    """Static input specs under the model's names: DataInputConfig's shapes, checked against the model's,
    or the model's own when DataInputConfig is absent and they are fully static."""
    if wanted is None:
        open_ = [i for i in declared if i.shape is None or None in i.shape]
        if open_:
            raise ValidationError(
                FIELD,
                f"{framework} model input(s) {', '.join(f'{i.name} {_show(i.shape)}' for i in open_)} leave "
                f"dimensions open; DataInputConfig must give every input's shape, e.g. {config_example(declared)}",
            )
        return [TensorSpec(i.name, tuple(i.shape), i.dtype) for i in declared]  # type: ignore[arg-type]
    by_name = match_names(declared, wanted)
    specs = []
    for i in declared:
        shape = by_name[i.name].shape
        if not fits(i.shape, shape):
            raise ValidationError(f"{FIELD}.{by_name[i.name].name}",
                                  f"shape {list(shape)} does not fit the model's input {i.name} {_show(i.shape)}")
        specs.append(TensorSpec(i.name, shape, i.dtype))
    return specs


def _show(shape: tuple[int | None, ...] | None) -> str:
    return "[unknown rank]" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def finish_onnx(model: onnx.ModelProto, inputs: list[TensorSpec], outputs: list[TensorSpec],
                tool: str) -> onnx.ModelProto:
    """Make tf2onnx's model what the backends expect: IR <= 10, only standard ops (else name the op that
    did not convert), Kiln's input/output names, and static shapes everywhere."""
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    unconverted = sorted({n.op_type for n in model.graph.node
                          if n.domain in STANDARD_DOMAINS and not onnx.defs.has(n.op_type, n.domain)}
                         | {f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if unconverted:
        raise CompilationError(
            "convert", f"{tool} has no ONNX conversion for operation(s) {', '.join(unconverted)}.",
            "replace those operations in the model with supported ones (tf2onnx's support list: "
            "https://github.com/onnx/tensorflow-onnx/blob/main/support_status.md), then save it again.",
        )
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(graph_inputs) != len(inputs) or len(model.graph.output) != len(outputs):
        raise CompilationError("convert", f"{tool} produced {len(graph_inputs)} inputs and {len(model.graph.output)} "
                               f"outputs; the model has {len(inputs)} and {len(outputs)}.",
                               "please report this with the model.")
    rename(model, {v.name: s.name for v, s in zip(graph_inputs, inputs)}
           | {v.name: s.name for v, s in zip(model.graph.output, outputs)})
    for value, spec in [*zip(graph_inputs, inputs), *zip(model.graph.output, outputs)]:
        _set_shape(value, spec.shape)
    del model.graph.value_info[:]  # tf2onnx leaves open batch dims there; inference redoes them static
    _unshape_subgraphs(model.graph)
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes are an optimisation hint for the backends, not a requirement
        return model


def _unshape_subgraphs(graph: onnx.GraphProto) -> None:
    """Drop the shapes tf2onnx writes on Loop/If bodies' inputs, outputs and values, keeping their types: it
    declares TensorList loop state (a TFLite WHILE from a Keras LSTM) as a scalar, which onnxruntime's type
    inference then refuses; without them the shapes are inferred from the values actually passed."""
    for node in graph.node:
        for attr in node.attribute:
            for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                # a Loop body's iteration count and condition are scalars by the spec: onnxruntime needs them so
                fixed = 2 if node.op_type == "Loop" else 0
                for value in (*body.input[fixed:], *body.output[min(fixed, 1):]):
                    value.type.tensor_type.ClearField("shape")
                del body.value_info[:]
                _unshape_subgraphs(body)


def convert_function(function, tf_specs: list, inputs_as_nchw: list[str] | None = None) -> onnx.ModelProto:
    """tf2onnx on a tf.function, frozen here first: every captured variable *and* captured constant tensor
    becomes a graph constant. (tf2onnx's from_function keeps captured tensors, e.g. a Keras Normalization
    layer's mean and variance, as extra graph inputs.) inputs_as_nchw: spec names whose input becomes NCHW."""
    tf = import_tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    concrete = function.get_concrete_function(*tf_specs)
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    nchw = [name for name, spec in zip(inputs, tf_specs) if spec.name in (inputs_as_nchw or [])]
    return convert_graph_def(frozen.graph.as_graph_def(add_shapes=True), inputs, [t.name for t in frozen.outputs],
                             inputs_as_nchw=nchw or None)


def convert_graph_def(graph_def, input_names: list[str], output_names: list[str], **options: Any) -> onnx.ModelProto:
    """tf2onnx on a frozen GraphDef, with Kiln's handlers for the TensorFlow ops tf2onnx has none for."""
    tf2onnx = import_tf2onnx()
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=input_names, output_names=output_names,
                                              opset=OPSET, custom_op_handlers=tf_op_handlers(), **options)
    return model


def tf_op_handlers() -> dict[str, tuple]:
    """tf2onnx custom op handlers (op type -> (handler, args)) for TensorFlow ops it cannot convert."""
    return {"Erfc": (_erfc_as_one_minus_erf, [])}


def _erfc_as_one_minus_erf(ctx, node, name: str, args: list) -> None:
    """Keras 3's exact gelu (0.5 * x * erfc(-x / sqrt 2)) calls Erfc, which ONNX lacks: erfc(x) = 1 - erf(x)."""
    from onnx import helper
    from tf2onnx import utils
    node.type = "Erf"
    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{name}_erfc"),
                                  inputs=[one.output[0], node.output[0]])


def rename(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename graph values (inputs, outputs, node edges) in place."""
    mapping = {old: new for old, new in mapping.items() if old != new}
    if not mapping:
        return
    graph = model.graph
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)


def _set_shape(value: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    dims = value.type.tensor_type.shape.dim
    del dims[:]
    for size in shape:
        dims.add().dim_value = size


def conversion_failed(tool: str, exc: BaseException, hint: str) -> CompilationError:
    """A converter's exception as a typed error with its first line."""
    return CompilationError("convert", f"{tool} could not convert the model: {first_line(exc)}", hint)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else exc.__class__.__name__


def numpy_dtype(tf_dtype: Any) -> str:
    """A tf.DType (or numpy type) as a numpy dtype name."""
    return np.dtype(getattr(tf_dtype, "as_numpy_dtype", tf_dtype)).name

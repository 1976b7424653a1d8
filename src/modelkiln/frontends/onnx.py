"""ONNX frontend: one .onnx file; DataInputConfig fixes dynamic dims. Reference: onnxruntime."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one
from modelkiln.frontends.input_config import FIELD, parse_data_input_config
from modelkiln.frontends.onnx_fold import fold_static_ifs

MAX_IR_VERSION = 10  # the newest IR onnxruntime 1.31 loads; onnx 1.23 helpers write 14 by default
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Load the archive's .onnx file, pin its input shapes, and check it is standard ONNX.

    Input dtypes come from the graph itself, so CompilerOptions DTYPE is not needed here."""
    path = exactly_one(model_dir, (".onnx",), "ONNX")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types
        raise CompilationError(
            "convert", f"{path.name} is not a readable ONNX file ({exc}).",
            "export the model again (e.g. torch.onnx.export) and check it with onnx.checker.check_model.",
        ) from None
    notes: list[str] = []
    if model.ir_version > MAX_IR_VERSION:
        notes.append(f"ONNX IR version {model.ir_version} lowered to {MAX_IR_VERSION} (onnxruntime's newest).")
        model.ir_version = MAX_IR_VERSION
    inputs = pin_input_shapes(model, parse_data_input_config(data_input_config))
    _unsize_dynamic_dims(model)
    notes += fold_static_ifs(model)  # pinned shapes make the dead side of shape tests ill-typed
    check_operators(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise CompilationError(
            "convert", f"the model's shapes do not check out with these inputs: {_first_line(exc)}",
            f"check {FIELD} against the shapes the model was exported for.",
        ) from None
    reference = onnxruntime_reference(model)
    outputs = output_specs(reference, inputs, [o.name for o in model.graph.output])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return ConvertedModel(
        onnx_model=model, inputs=inputs, outputs=outputs, reference=reference, framework="ONNX",
        framework_version=f"opset {opset}" if opset else None,
        converters={"onnx": onnx.__version__, "onnxruntime": ort.__version__}, notes=notes,
    )


def pin_input_shapes(model: onnx.ModelProto, wanted: list[TensorSpec] | None) -> list[TensorSpec]:
    """Match DataInputConfig against the graph inputs, write its shapes into the graph, return specs."""
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    declared = {i.name: i for i in graph_inputs}
    hint = "set DataInputConfig to " + _config_example(graph_inputs)
    if any(not isinstance(_declared_dim(d), int) for v in graph_inputs for d in v.type.tensor_type.shape.dim):
        hint += " with your sizes in place of the 1s that stand for the model's dynamic dims"
    if wanted is not None:
        names = [w.name for w in wanted]
        unknown = [n for n in names if n not in declared]
        missing = [n for n in declared if n not in names]
        if unknown or missing:
            raise CompilationError(
                "convert",
                f"DataInputConfig names {names} but the model's inputs are {list(declared)}"
                + (f" (unknown: {unknown})" if unknown else "") + (f" (missing: {missing})" if missing else "") + ".",
                hint,
            )
    by_name = {w.name: w for w in wanted or []}
    specs = []
    for value in graph_inputs:
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        model_shape = [_declared_dim(d) for d in dims]
        if value.name in by_name:
            shape = by_name[value.name].shape
            if len(shape) != len(dims) or any(
                isinstance(m, int) and m != s for m, s in zip(model_shape, shape)
            ):
                raise CompilationError(
                    "convert",
                    f"DataInputConfig gives input {value.name!r} shape {list(shape)}, but the model "
                    f"declares {model_shape}.", hint,
                )
        elif all(isinstance(m, int) and m > 0 for m in model_shape):
            shape = tuple(model_shape)
        else:
            raise CompilationError(
                "convert", f"input {value.name!r} has dynamic shape {model_shape} and no DataInputConfig.", hint
            )
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = size
        specs.append(TensorSpec(value.name, tuple(shape), dtype))
    return specs


def check_operators(model: onnx.ModelProto) -> None:
    """Refuse operators outside the ONNX standard, naming the op and node."""
    for node in model.graph.node:
        if node.domain in STANDARD_DOMAINS and not onnx.defs.has(node.op_type, node.domain):
            raise CompilationError(
                "convert",
                f"operator {node.op_type!r} (node {node.name or '<unnamed>'!r}) is not an ONNX operator.",
                "replace it with standard ONNX operators before export, or export with a newer opset.",
            )


def onnxruntime_reference(model: onnx.ModelProto):
    """A callable running the model with onnxruntime, the reference executor for ONNX, unoptimized."""
    # Graph optimizations off: the reference must not share the onnxruntime candidate's fused kernels, or a
    # bug in a fusion would be in both and go unseen.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompilationError(
            "convert", f"onnxruntime, the reference for ONNX models, cannot load the model: {_first_line(exc)}",
            "check the model with onnx.checker.check_model; custom-domain operators are not supported.",
        ) from None
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Feeds) -> list[np.ndarray]:
        return [np.asarray(a) for a in session.run(names, feeds)]

    return run


def output_specs(reference, inputs: list[TensorSpec], names: list[str] | None = None) -> list[TensorSpec]:
    """Output names/shapes/dtypes, read off one reference run on zeros."""
    feeds = {i.name: np.zeros(i.shape, dtype=i.dtype) for i in inputs}
    try:
        outputs = reference(feeds)
    except Exception as exc:
        raise CompilationError(
            "convert", f"the model fails on inputs of the declared shapes: {_first_line(exc)}",
            f"check {FIELD}: {', '.join(f'{i.name} {list(i.shape)}' for i in inputs)}.",
        ) from None
    names = names or [f"output{i}" for i in range(len(outputs))]
    return [TensorSpec(n, tuple(o.shape), o.dtype.name) for n, o in zip(names, outputs)]


def _declared_dim(dim) -> int | str:
    """A dim as the model declares it: a size, or its symbol ("?" when unnamed). Exporters such as paddle2onnx
    write -1 (or 0) as dim_value for a dynamic dim: that is a symbol too, not a size."""
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return dim.dim_value
    return dim.dim_param or "?"


def _unsize_dynamic_dims(model: onnx.ModelProto) -> None:
    """Turn -1/0 dim_values on outputs and value_info into unnamed dims, so that shape inference fills them
    in from the pinned inputs instead of finding the two in conflict."""
    for value in (*model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.Clear()


def _config_example(graph_inputs) -> str:
    """A DataInputConfig for these inputs: their fixed sizes, with 1 standing in for each dynamic dim."""
    shapes = {}
    for value in graph_inputs:
        dims = [_declared_dim(d) for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = [d if isinstance(d, int) else 1 for d in dims]
    return json.dumps(shapes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else exc.__class__.__name__

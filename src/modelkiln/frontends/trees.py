"""What the tree-ensemble frontends (XGBoost, scikit-learn forests) share: the input spec, Treelite's
output shape, the reference reshaped to it, and an ONNX twin whose outputs match.

A tree model's common form is a Treelite model (`ConvertedModel.tree_model`); its one input is a 2-D
float32 matrix `[-1, F]` whose rows are independent, so the batch dimension stays free (-1).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import treelite

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import Feeds, TensorSpec
from modelkiln.frontends.input_config import FIELD, parse_data_input_config

ANY_ROWS = -1  # a batch dimension any size fits
ONNX_OPSET = 17


def input_spec(data_input_config: str | None, num_feature: int, framework: str) -> TensorSpec:
    """The matrix input, `[-1, F]`: DataInputConfig is optional, and when given must say F columns."""
    hint = f'set {FIELD} to {{"data": [1, {num_feature}]}} or leave it out.'
    specs = parse_data_input_config(data_input_config, allow_list=True)
    if specs is None:
        return TensorSpec("data", (ANY_ROWS, num_feature), "float32")
    if len(specs) != 1:
        raise CompilationError("convert", f"{framework} models take one input matrix; DataInputConfig names "
                               f"{len(specs)}: {[s.name for s in specs]}.", hint)
    spec = specs[0]
    if len(spec.shape) != 2 or spec.shape[1] != num_feature:
        raise CompilationError(
            "convert", f"DataInputConfig gives {spec.name!r} shape {list(spec.shape)}, but the model takes rows "
            f"of {num_feature} features ([N, {num_feature}]).", hint)
    name = "data" if spec.name == "input0" else spec.name  # the bare-list form names no input
    return TensorSpec(name, (ANY_ROWS, num_feature), "float32")


def row_shape(tree_model: treelite.Model) -> tuple[int, ...]:
    """What one row's prediction looks like in the compiled library: () or (classes,)."""
    header = treelite_header(tree_model)
    per_row = header["num_target"] * max(header["num_class"])
    return () if per_row == 1 else (per_row,)


def treelite_header(tree_model: treelite.Model) -> dict[str, Any]:
    """Treelite's model header (task type, classes, postprocessor), without the trees."""
    doc = json.loads(tree_model.dump_as_json())
    doc.pop("trees", None)
    return doc


def output_spec(tree_model: treelite.Model) -> TensorSpec:
    """The one output: predictions `[-1]` or `[-1, classes]`, in the leaves' float type."""
    return TensorSpec("predictions", (ANY_ROWS, *row_shape(tree_model)), tree_model.output_type)


def shaped_reference(predict: Callable[[np.ndarray], np.ndarray], tree_model: treelite.Model, input_name: str,
                     what: str) -> Callable[[Feeds], list[np.ndarray]]:
    """The framework's own predict, as a reference with the compiled library's output shape.

    A binary classifier whose predict_proba gives both columns while the trees give P(class 1) is
    compared on column 1; any other difference in size is an error naming `what` was compared."""
    shape, dtype = row_shape(tree_model), np.dtype(tree_model.output_type)

    def run(feeds: Feeds) -> list[np.ndarray]:
        x = feeds[input_name]
        out = np.asarray(predict(x))
        per_row = int(np.prod(shape)) if shape else 1
        if out.size == 2 * x.shape[0] and per_row == 1:
            out = out.reshape(x.shape[0], 2)[:, 1]
        if out.size != x.shape[0] * per_row:
            raise CompilationError(
                "convert", f"{what} gives {list(out.shape)} for {x.shape[0]} rows, but the compiled trees give "
                f"{[x.shape[0], *shape]}.", "use an objective or estimator whose output is scores or probabilities.")
        return [out.reshape((x.shape[0], *shape)).astype(dtype)]

    return run


def gtil_reference(tree_model: treelite.Model, input_name: str) -> Callable[[Feeds], list[np.ndarray]]:
    """Treelite's own interpreter (GTIL) as the reference, for files no installed framework can read."""
    shape = row_shape(tree_model)

    def run(feeds: Feeds) -> list[np.ndarray]:
        x = feeds[input_name]
        return [np.asarray(treelite.gtil.predict(tree_model, x)).reshape((x.shape[0], *shape))]

    return run


def adapt_onnx(model: onnx.ModelProto, source_output: str, spec: TensorSpec, input_name: str,
               take_column: int | None = None) -> onnx.ModelProto:
    """A converter's ONNX graph rewired to Kiln's output: `source_output`, optionally one column,
    reshaped to spec's row shape, cast to its dtype, named spec.name; other outputs dropped."""
    from onnx import helper, numpy_helper

    graph = model.graph
    graph.input[0].name, old_input = input_name, graph.input[0].name
    for node in graph.node:
        node.input[:] = [input_name if n == old_input else n for n in node.input]
    if source_output == spec.name:  # the converter already used Kiln's name: free it for the final Cast
        source_output = _rename_value(graph, spec.name, f"{spec.name}_source")
    nodes, current = [], source_output
    if take_column is not None:
        graph.initializer.extend([numpy_helper.from_array(np.array([take_column], np.int64), "kiln_col")])
        nodes.append(helper.make_node("Gather", [current, "kiln_col"], ["kiln_column"], axis=1))
        current = "kiln_column"
    graph.initializer.extend([numpy_helper.from_array(np.array([-1, *spec.shape[1:]], np.int64), "kiln_shape")])
    nodes.append(helper.make_node("Reshape", [current, "kiln_shape"], ["kiln_reshaped"]))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    nodes.append(helper.make_node("Cast", ["kiln_reshaped"], [spec.name], to=elem))
    graph.node.extend(nodes)
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):  # converters may emit ai.onnx.ml only
        model.opset_import.append(helper.make_opsetid("", ONNX_OPSET))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(spec.name, elem, [None, *spec.shape[1:]]))
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> str:
    """Rename a value wherever the graph produces or uses it; returns the new name."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    return new

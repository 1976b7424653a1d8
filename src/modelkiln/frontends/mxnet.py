"""MXNet frontend: `*-symbol.json` + `*.params`, converted op by op to ONNX without the mxnet package.

Reference: mxnet_reference.py, a numpy interpreter of the same symbol graph (mxnet 1.x needs numpy < 1.24).
To support another operator: write `_convert_<op>(g, node, inputs) -> output name` here, register it in
CONVERTERS, and add the same op to mxnet_reference.OPS.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, checked_onnx_model, find_model_files
from modelkiln.frontends.input_config import FIELD, parse_data_input_config
from modelkiln.frontends.mxnet_params import (
    Node, Symbol, attr_bool, attr_float, attr_tuple, read_params, read_symbol,
)
from modelkiln.frontends.mxnet_reference import BINARY_OPS, OPS, SCALAR_OPS, ShapeError, run_symbol

OPSET = 17
LABEL_SLOTS = {"SoftmaxOutput": 1, "LinearRegressionOutput": 1, "LogisticRegressionOutput": 1}


@dataclass
class _Builder:
    """The ONNX graph under construction, with the shapes the reference computed for every MXNet value."""

    symbol: Symbol
    params: dict[str, np.ndarray]
    shapes: dict[tuple[int, int], tuple[int, ...]]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, TensorProto] = field(default_factory=dict)

    def const(self, name: str, value: np.ndarray) -> str:
        """A float32 (or int64) initializer, added once."""
        if name not in self.initializers:
            array = np.asarray(value)
            array = array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def add(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def param(self, node: Node, slot: int) -> np.ndarray | None:
        """The stored value of the node's input `slot` when it is a parameter, else None."""
        source = self.symbol.nodes[node.inputs[slot][0]]
        return self.params.get(source.name) if source.op == "null" else None

    def shape(self, node: Node, slot: int | None = None) -> tuple[int, ...]:
        """Shape of the node's output (slot None) or of its input `slot`."""
        return self.shapes[(node.index, 0) if slot is None else node.inputs[slot]]


Converter = Callable[[_Builder, Node, list[str]], str]


def _out(node: Node) -> str:
    return f"{node.name}_output"  # MXNet's own name for output 0 (list_outputs)


def _convolution(g: _Builder, node: Node, x: list[str]) -> str:
    a = node.attrs
    pad = attr_tuple(a, "pad", (0, 0)) or (0, 0)
    attrs = {"kernel_shape": list(attr_tuple(a, "kernel")), "strides": list(attr_tuple(a, "stride", (1, 1)) or (1, 1)),
             "dilations": list(attr_tuple(a, "dilate", (1, 1)) or (1, 1)), "pads": list(pad) * 2,
             "group": int(a.get("num_group", "1"))}
    inputs = x[:2] if attr_bool(a, "no_bias", False) else x[:3]
    return g.add("Conv", inputs, _out(node), **attrs)


def _batch_norm(g: _Builder, node: Node, x: list[str]) -> str:
    scale = x[1]
    if attr_bool(node.attrs, "fix_gamma", True):  # MXNet reads gamma as 1 whatever the file stores
        scale = g.const(f"{node.name}/ones", np.ones(g.shape(node, 1), np.float32))
    return g.add("BatchNormalization", [x[0], scale, *x[2:5]], _out(node),
                 epsilon=attr_float(node.attrs, "eps", 1e-3))


def _pooling(g: _Builder, node: Node, x: list[str]) -> str:
    a = node.attrs
    kind = a.get("pool_type", "max")
    if attr_bool(a, "global_pool", False):
        return g.add("GlobalMaxPool" if kind == "max" else "GlobalAveragePool", x[:1], _out(node))
    convention = a.get("pooling_convention", "valid")
    pad = attr_tuple(a, "pad", (0, 0)) or (0, 0)
    attrs: dict[str, Any] = {"kernel_shape": list(attr_tuple(a, "kernel")), "pads": list(pad) * 2,
                             "strides": list(attr_tuple(a, "stride", (1, 1)) or (1, 1)),
                             "ceil_mode": int(convention == "full")}
    if kind == "avg":
        attrs["count_include_pad"] = int(attr_bool(a, "count_include_pad", True))
    return g.add("MaxPool" if kind == "max" else "AveragePool", x[:1], _out(node), **attrs)


def _fully_connected(g: _Builder, node: Node, x: list[str]) -> str:
    bias = not attr_bool(node.attrs, "no_bias", False)
    if attr_bool(node.attrs, "flatten", True):
        flat = g.add("Flatten", x[:1], f"{node.name}/flat", axis=1)
        return g.add("Gemm", [flat, x[1]] + x[2:3] * bias, _out(node), transB=1)
    weight_t = g.add("Transpose", [x[1]], f"{node.name}/weight_t", perm=[1, 0])
    y = g.add("MatMul", [x[0], weight_t], f"{node.name}/matmul" if bias else _out(node))
    return g.add("Add", [y, x[2]], _out(node)) if bias else y


ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus", "softsign": "Softsign"}


def _activation(g: _Builder, node: Node, x: list[str]) -> str:
    return g.add(ACTIVATIONS[node.attrs.get("act_type", "relu")], x[:1], _out(node))


def _leaky_relu(g: _Builder, node: Node, x: list[str]) -> str:
    kind, slope = node.attrs.get("act_type", "leaky"), attr_float(node.attrs, "slope", 0.25)
    if kind == "prelu":
        rank = len(g.shape(node, 0))
        slopes = g.add("Reshape", [x[1], g.const(f"{node.name}/slope_shape",
                                                  np.array([-1] + [1] * (rank - 2)) if rank > 1 else np.array([-1]))],
                       f"{node.name}/slopes")
        return g.add("PRelu", [x[0], slopes], _out(node))
    if kind == "elu":
        return g.add("Elu", x[:1], _out(node), alpha=slope)
    if kind == "selu":
        return g.add("Selu", x[:1], _out(node))
    if kind == "rrelu":
        slope = (attr_float(node.attrs, "lower_bound", 0.125) + attr_float(node.attrs, "upper_bound", 0.334)) / 2
    return g.add("LeakyRelu", x[:1], _out(node), alpha=slope)


def _softmax_flat(g: _Builder, node: Node, x: list[str]) -> str:
    """Softmax over everything but the batch axis, shape kept: SoftmaxOutput's and SoftmaxActivation's default."""
    shape = g.shape(node, 0)
    if len(shape) == 2:
        return g.add("Softmax", x[:1], _out(node), axis=1)
    flat = g.add("Flatten", x[:1], f"{node.name}/flat", axis=1)
    y = g.add("Softmax", [flat], f"{node.name}/softmax", axis=1)
    return g.add("Reshape", [y, g.const(f"{node.name}/shape", np.array(shape))], _out(node))


def _softmax_output(g: _Builder, node: Node, x: list[str]) -> str:
    if attr_bool(node.attrs, "preserve_shape", False):
        return g.add("Softmax", x[:1], _out(node), axis=-1)
    if attr_bool(node.attrs, "multi_output", False):
        return g.add("Softmax", x[:1], _out(node), axis=1)
    return _softmax_flat(g, node, x)


def _softmax_activation(g: _Builder, node: Node, x: list[str]) -> str:
    if node.attrs.get("mode", "instance") == "channel":
        return g.add("Softmax", x[:1], _out(node), axis=1)
    return _softmax_flat(g, node, x)


def _softmax(g: _Builder, node: Node, x: list[str]) -> str:
    temperature = attr_float(node.attrs, "temperature", 1.0)
    if temperature != 1.0:
        x = [g.add("Div", [x[0], g.const(f"{node.name}/t", np.array(temperature))], f"{node.name}/scaled")]
    return g.add("Softmax", x[:1], _out(node), axis=int(node.attrs.get("axis", "-1")))


def _reshape(g: _Builder, node: Node, x: list[str]) -> str:
    """MXNet's shape codes (0, -1, -2, -3, -4) resolved to the static shape the reference computed."""
    return g.add("Reshape", [x[0], g.const(f"{node.name}/shape", np.array(g.shape(node)))], _out(node))


def _binary(onnx_op: str) -> Converter:
    return lambda g, node, x: g.add(onnx_op, x[:2], _out(node))


def _scalar(onnx_op: str, left: bool) -> Converter:
    def convert(g: _Builder, node: Node, x: list[str]) -> str:
        s = g.const(f"{node.name}/scalar", np.array(attr_float(node.attrs, "scalar", 0.0)))
        return g.add(onnx_op, [s, x[0]] if left else [x[0], s], _out(node))
    return convert


def _unary(onnx_op: str, **attrs: Any) -> Converter:
    return lambda g, node, x: g.add(onnx_op, x[:1], _out(node), **attrs)


def _clip(g: _Builder, node: Node, x: list[str]) -> str:
    low = g.const(f"{node.name}/min", np.array(attr_float(node.attrs, "a_min", -np.inf)))
    high = g.const(f"{node.name}/max", np.array(attr_float(node.attrs, "a_max", np.inf)))
    return g.add("Clip", [x[0], low, high], _out(node))


def _transpose(g: _Builder, node: Node, x: list[str]) -> str:
    axes = attr_tuple(node.attrs, "axes") or tuple(reversed(range(len(g.shape(node, 0)))))
    return g.add("Transpose", x[:1], _out(node), perm=list(axes))


def _concat(g: _Builder, node: Node, x: list[str]) -> str:
    return g.add("Concat", x, _out(node), axis=int(node.attrs.get("dim", "1")))


ONNX_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min"}
CONVERTERS: dict[str, Converter] = {
    "Convolution": _convolution, "BatchNorm": _batch_norm, "Pooling": _pooling, "FullyConnected": _fully_connected,
    "Activation": _activation, "LeakyReLU": _leaky_relu,
    "relu": _unary("Relu"), "sigmoid": _unary("Sigmoid"), "tanh": _unary("Tanh"),
    "Flatten": _unary("Flatten", axis=1), "flatten": _unary("Flatten", axis=1), "Dropout": _unary("Identity"),
    "Concat": _concat, "concat": _concat,
    "SoftmaxOutput": _softmax_output, "SoftmaxActivation": _softmax_activation, "softmax": _softmax,
    "LinearRegressionOutput": _unary("Identity"), "LogisticRegressionOutput": _unary("Sigmoid"),
    "Reshape": _reshape, "reshape": _reshape, "transpose": _transpose, "clip": _clip,
    "_power_scalar": _scalar("Pow", False),
}
for _kind, _names in BINARY_OPS.items():
    CONVERTERS.update({name: _binary(ONNX_BINARY[_kind]) for name in _names})
for _name, (_kind, _left) in SCALAR_OPS.items():
    CONVERTERS[_name] = _scalar(ONNX_BINARY[_kind], _left)
assert set(CONVERTERS) == set(OPS), "every converter needs its numpy reference and vice versa"


# Attribute values the converters (and the numpy reference) handle; anything else is refused by name.
SUPPORTED_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("Activation", "act_type"): tuple(ACTIVATIONS),
    ("LeakyReLU", "act_type"): ("leaky", "prelu", "elu", "selu", "rrelu"),
    ("Pooling", "pool_type"): ("max", "avg"),
    ("Pooling", "pooling_convention"): ("valid", "full"),
    ("BatchNorm", "axis"): ("1",),
    ("Convolution", "layout"): ("None", "NCHW"),
    ("Pooling", "layout"): ("None", "NCHW"),
}
TWO_D = ("Convolution", "Pooling")  # kernel must be 2-D (NCHW images)


def _check_attrs(node: Node) -> None:
    for (op, key), allowed in SUPPORTED_VALUES.items():
        if node.op == op and key in node.attrs and node.attrs[key] not in allowed:
            raise _unsupported(node, f"{op} {key}={node.attrs[key]!r} (supported: {', '.join(allowed)})")
    global_pool = node.op == "Pooling" and attr_bool(node.attrs, "global_pool", False)
    if node.op in TWO_D and not global_pool and len(attr_tuple(node.attrs, "kernel")) != 2:
        raise _unsupported(node, f"{node.op} with kernel={node.attrs.get('kernel')} (only 2-D kernels)")


def _unsupported(node: Node, what: str) -> CompilationError:
    return CompilationError(
        "convert", f"node {node.index} {node.name!r}: {what} is not supported.",
        "replace it in the symbol with a supported form, or export the model to ONNX and submit that.")


# ---- load -------------------------------------------------------------------------------------------------

def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Read symbol.json + .params, check every op is supported, and convert the graph to ONNX."""
    symbol_path, params_path = _model_files(model_dir)
    symbol = read_symbol(symbol_path)
    params = read_params(params_path)
    _check_ops(symbol)
    inputs = _input_specs(symbol, params, data_input_config, input_dtype or "float32")
    _check_params(symbol, params, {i.name for i in inputs})
    try:
        zeros = run_symbol(symbol, {**params, **{i.name: np.zeros(i.shape) for i in inputs}})
    except ShapeError as exc:
        raise ValidationError(FIELD, f"the model cannot run on {_shapes_text(inputs)}: {exc}") from None
    builder = _Builder(symbol, params, {k: v.shape for k, v in zeros.items()})
    outputs = _build(builder, inputs)
    model = _onnx_model(builder, inputs, outputs, symbol_path.name)

    def reference(feeds: Feeds) -> list[np.ndarray]:
        values = run_symbol(symbol, {**params, **{i.name: feeds[i.name] for i in inputs}})
        return [values[h].astype(np.float32) for h in symbol.heads]

    return ConvertedModel(
        onnx_model=model, inputs=inputs, outputs=outputs, reference=reference, framework="MXNET",
        framework_version=symbol.mxnet_version,
        converters={"modelkiln.frontends.mxnet": "built-in", "onnx": onnx.__version__, "numpy": np.__version__},
        notes=[f"{symbol_path.name} + {params_path.name} converted op by op to ONNX opset {OPSET}; reference: "
               "Kiln's numpy interpreter of the symbol graph (float64), not the mxnet package."],
    )


def _model_files(model_dir: Path) -> tuple[Path, Path]:
    symbols = find_model_files(model_dir, ("-symbol.json",))
    params = find_model_files(model_dir, (".params",))
    hint = "put exactly one <name>-symbol.json and one <name>-0000.params (mx.model.save_checkpoint) in model.tar.gz."
    if len(symbols) != 1:
        names = ", ".join(p.name for p in symbols) or "none"
        raise CompilationError("fetch", f"MXNet models need exactly one *-symbol.json file; found {names}.", hint)
    if len(params) != 1:
        prefix = symbols[0].name[: -len("-symbol.json")]
        matching = [p for p in params if p.name.startswith(prefix + "-") or p.name == prefix + ".params"]
        if len(matching) != 1:
            names = ", ".join(p.name for p in params) or "none"
            raise CompilationError("fetch", f"MXNet models need exactly one .params file next to "
                                   f"{symbols[0].name}; found {names}.", hint)
        params = matching
    return symbols[0], params[0]


def _check_ops(symbol: Symbol) -> None:
    for node in symbol.nodes:
        if node.op != "null" and node.op not in CONVERTERS:
            raise CompilationError(
                "convert", f"operator {node.op!r} (node {node.index} {node.name!r}) is not supported by Kiln's "
                f"MXNet frontend. Supported: {', '.join(sorted(CONVERTERS, key=str.lower))}.",
                "replace the operator in the symbol, or export the model to ONNX (mx.onnx.export_model) "
                "and submit it with Framework ONNX.")
        _check_attrs(node)
        for source, index in node.inputs:
            if index != 0 and symbol.nodes[source].op != "null":
                raise _unsupported(node, f"using output {index} of node {source} {symbol.nodes[source].name!r}")


def _data_variables(symbol: Symbol, params: dict[str, np.ndarray]) -> list[Node]:
    """Variables that are neither parameters nor labels of a loss layer: the model's inputs."""
    used = set()
    for node in symbol.nodes:
        for slot, (source, _) in enumerate(node.inputs):
            if LABEL_SLOTS.get(node.op) != slot:
                used.add(source)
    return [n for n in symbol.nodes if n.op == "null" and n.name not in params and n.index in used]


def _input_specs(symbol: Symbol, params: dict[str, np.ndarray], config: str | None, dtype: str) -> list[TensorSpec]:
    variables = _data_variables(symbol, params)
    names = [v.name for v in variables]
    example = json.dumps({n: [1, 3, 224, 224] for n in names})
    wanted = parse_data_input_config(config, default_dtype=dtype)
    if wanted is None:
        shapes = {v.name: attr_tuple(v.attrs, "__shape__") for v in variables}
        if all(s and all(d > 0 for d in s) for s in shapes.values()):
            return [TensorSpec(n, shapes[n], dtype) for n in names]
        raise ValidationError(FIELD, f"MXNet symbol files do not record input shapes; set it, e.g. {example}.")
    if any(w.dtype != "float32" for w in wanted):  # .params hold float32 weights; the graph computes in float32
        raise ValidationError(FIELD, f"MXNet inputs must be float32; got {[(w.name, w.dtype) for w in wanted]}.")
    given = [w.name for w in wanted]
    if sorted(given) != sorted(names):
        raise ValidationError(FIELD, f"names inputs {given} but the symbol's inputs are {names}; e.g. {example}.")
    by_name = {w.name: w for w in wanted}
    return [by_name[n] for n in names]


def _check_params(symbol: Symbol, params: dict[str, np.ndarray], inputs: set[str]) -> None:
    for node in symbol.nodes:
        for slot, (source, _) in enumerate(node.inputs):
            var = symbol.nodes[source]
            if var.op == "null" and var.name not in params and var.name not in inputs \
                    and LABEL_SLOTS.get(node.op) != slot:
                raise CompilationError("convert", f"the .params file has no array {var.name!r} "
                                       f"(input {slot} of node {node.index} {node.name!r}).",
                                       "save the symbol and the parameters from the same model.")


def _build(g: _Builder, inputs: list[TensorSpec]) -> list[TensorSpec]:
    names: dict[int, str] = {}
    for node in g.symbol.nodes:
        if node.op == "null":
            if node.name in g.params:
                names[node.index] = g.const(node.name, g.params[node.name])
            else:
                names[node.index] = node.name
            continue
        args = [names[s] for slot, (s, _) in enumerate(node.inputs) if LABEL_SLOTS.get(node.op) != slot]
        names[node.index] = CONVERTERS[node.op](g, node, args)
    outputs, seen = [], set()
    for i, head in enumerate(g.symbol.heads):
        name = names[head[0]]
        if name in seen:  # one value returned twice: give the second its own name
            name = g.add("Identity", [name], f"{name}_{i}")
        seen.add(name)
        outputs.append(TensorSpec(name, tuple(g.shapes[head]), "float32"))
    return outputs


def _onnx_model(g: _Builder, inputs: list[TensorSpec], outputs: list[TensorSpec], source: str) -> onnx.ModelProto:
    def info(spec: TensorSpec) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(spec.name, helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)),
                                             list(spec.shape))
    used = {name for node in g.nodes for name in node.input}  # e.g. gamma of a fix_gamma BatchNorm is not
    graph = helper.make_graph(g.nodes, source.removesuffix("-symbol.json"), [info(i) for i in inputs],
                              [info(o) for o in outputs],
                              initializer=[t for name, t in g.initializers.items() if name in used])
    return checked_onnx_model(graph, OPSET)


def _shapes_text(inputs: list[TensorSpec]) -> str:
    return ", ".join(f"{i.name} {list(i.shape)}" for i in inputs)

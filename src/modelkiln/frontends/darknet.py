"""Darknet frontend: one `.cfg` + one `.weights`, converted layer by layer to ONNX. Reference: OpenCV's
Darknet reader (cv2.dnn.readNetFromDarknet), an implementation independent of this converter.

[yolo] and [region] heads are not decoded: each becomes a model output holding the raw NCHW tensor that
feeds it (anchors * (5 + classes) channels), named after the head (`yolo_16`). Decoding boxes, like NMS, is
post-processing. To support another layer: write `_<kind>(g, section, index, layers, weights) -> _Value`,
register it in CONVERTERS, and teach `_opencv_name` what OpenCV calls its output.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, checked_onnx_model, exactly_one
from modelkiln.frontends.darknet_cfg import Section, Weights, read_cfg, read_weights
from modelkiln.frontends.input_config import FIELD, parse_data_input_config

OPSET = 17
BN_EPS = 1e-6  # darknet divides by sqrt(variance) + .000001f
HEADS = ("yolo", "region")


@dataclass
class _Value:
    """A layer's output: ONNX tensor name and static NCHW (or N, features) shape."""

    name: str
    shape: tuple[int, ...]


@dataclass
class _Builder:
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)

    def const(self, name: str, value: np.ndarray) -> str:
        array = np.asarray(value)
        array = array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def add(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


Converter = Callable[[_Builder, Section, int, list[_Value], Weights], _Value]


def _error(section: Section, index: int, message: str, hint: str = "") -> CompilationError:
    return CompilationError("convert", f"layer {index} [{section.kind}] (cfg line {section.line}): {message}",
                            hint or "change the layer in the .cfg, or export the model to ONNX and submit that.")


# ---- activations: the ones OpenCV's reader (the reference) also runs ----------------------------------------

def _activate(g: _Builder, x: str, kind: str, name: str, section: Section, index: int) -> str:
    if kind == "linear":
        return x
    if kind == "leaky":
        return g.add("LeakyRelu", [x], name, alpha=0.1)
    if kind in ("relu", "tanh", "logistic"):
        return g.add({"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid"}[kind], [x], name)
    if kind == "swish":
        return g.add("Mul", [x, g.add("Sigmoid", [x], f"{name}/sigmoid")], name)
    if kind == "mish":  # x * tanh(softplus(x)); ONNX's Mish op needs opset 18
        return g.add("Mul", [x, g.add("Tanh", [g.add("Softplus", [x], f"{name}/sp")], f"{name}/tanh")], name)
    raise _error(section, index, f"activation={kind!r} is not supported (supported: {', '.join(ACTIVATIONS)}).")


ACTIVATIONS = ("linear", "leaky", "relu", "tanh", "logistic", "swish", "mish")


# ---- layers -----------------------------------------------------------------------------------------------

def _convolutional(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    x = layers[-1]
    if len(x.shape) != 4:
        raise _error(s, i, f"needs an NCHW input, got shape {list(x.shape)}.")
    channels = x.shape[1]
    filters, size, stride = s.int("filters", 1), s.int("size", 1), s.int("stride", 1)
    groups = s.int("groups", 1)
    padding = size // 2 if s.int("pad", 0) else s.int("padding", 0)
    if s.int("dilation", 1) != 1 or "stride_x" in s.options or "stride_y" in s.options:
        raise _error(s, i, "dilation and stride_x/stride_y are not supported.")
    if channels % groups or filters % groups:
        raise _error(s, i, f"groups={groups} does not divide {channels} input channels and {filters} filters.")
    bias = w.take(filters, f"layer {i} biases")
    if s.int("batch_normalize", 0):
        gamma = w.take(filters, f"layer {i} BN scales")
        mean = w.take(filters, f"layer {i} BN rolling mean")
        var = w.take(filters, f"layer {i} BN rolling variance")
    weights = w.take(filters * channels // groups * size * size, f"layer {i} weights")
    kernel = weights.reshape(filters, channels // groups, size, size).astype(np.float64)
    bias = bias.astype(np.float64)
    if s.int("batch_normalize", 0):  # folded: (conv - mean) / (sqrt(var) + eps) * gamma + bias
        scale = gamma / (np.sqrt(var.astype(np.float64)) + BN_EPS)
        kernel = kernel * scale[:, None, None, None]
        bias = bias - mean * scale
    name = f"conv_{i}"
    y = g.add("Conv", [x.name, g.const(f"{name}/W", kernel), g.const(f"{name}/B", bias)], name + "/conv",
              kernel_shape=[size, size], strides=[stride, stride], pads=[padding] * 4, group=groups)
    h, wd = ((d + 2 * padding - size) // stride + 1 for d in x.shape[2:])
    if h < 1 or wd < 1:
        raise _shape_error(s, i, f"gets a {x.shape[2]}x{x.shape[3]} map, smaller than its {size}x{size} kernel")
    out = _activate(g, y, s.options.get("activation", "logistic"), name, s, i)
    return _Value(g.add("Identity", [out], name) if out != name else out, (x.shape[0], filters, h, wd))


def _maxpool(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    x = layers[-1]
    stride = s.int("stride", 1)
    size = s.int("size", stride)
    padding = s.int("padding", size - 1)
    if "stride_x" in s.options or "stride_y" in s.options or s.int("maxpool_depth", 0):
        raise _error(s, i, "stride_x/stride_y and maxpool_depth are not supported.")
    # darknet: out = (in + padding - size) / stride + 1, windows start padding/2 before the input
    out = [(d + padding - size) // stride + 1 for d in x.shape[2:]]
    if min(out) < 1:
        raise _shape_error(s, i, f"gets a {x.shape[2]}x{x.shape[3]} map, smaller than its {size}x{size} window")
    begin = padding // 2
    end = [max(0, (o - 1) * stride + size - d - begin) for o, d in zip(out, x.shape[2:])]
    name = f"maxpool_{i}"
    g.add("MaxPool", [x.name], name, kernel_shape=[size, size], strides=[stride, stride],
          pads=[begin, begin, end[0], end[1]])
    return _Value(name, (*x.shape[:2], *out))


def _avgpool(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    x = layers[-1]
    return _Value(g.add("GlobalAveragePool", [x.name], f"avgpool_{i}"), (*x.shape[:2], 1, 1))


def _route(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    sources = [_layer_ref(s, i, ref, len(layers)) for ref in s.ints("layers")]
    if not sources:
        raise _error(s, i, "layers= is empty.")
    groups, group_id = s.int("groups", 1), s.int("group_id", 0)
    parts = []
    for src in sources:
        value = layers[src + 1]  # layers[0] is the model input
        if groups > 1:
            c = value.shape[1] // groups
            start = g.const(f"route_{i}/start{src}", np.array([group_id * c]))
            stop = g.const(f"route_{i}/stop{src}", np.array([(group_id + 1) * c]))
            axis = g.const(f"route_{i}/axis{src}", np.array([1]))
            value = _Value(g.add("Slice", [value.name, start, stop, axis], f"route_{i}/part{src}"),
                           (value.shape[0], c, *value.shape[2:]))
        parts.append(value)
    if any(p.shape[0:1] + p.shape[2:] != parts[0].shape[0:1] + parts[0].shape[2:] for p in parts):
        raise _shape_error(s, i, f"routes layers of shapes {[list(p.shape) for p in parts]}")
    name = f"route_{i}"
    if len(parts) > 1:
        g.add("Concat", [p.name for p in parts], name, axis=1)
    else:
        g.add("Identity", [parts[0].name], name)
    return _Value(name, (parts[0].shape[0], sum(p.shape[1] for p in parts), *parts[0].shape[2:]))


def _shortcut(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    if s.options.get("weights_type", "none") != "none" or len(s.ints("from")) != 1:
        raise _error(s, i, "weighted shortcuts (weights_type) and several from= layers are not supported.")
    x, other = layers[-1], layers[_layer_ref(s, i, s.ints("from")[0], len(layers)) + 1]
    if x.shape != other.shape:
        raise _shape_error(s, i, f"adds layers of shapes {list(x.shape)} and {list(other.shape)}")
    name = f"shortcut_{i}"
    y = g.add("Add", [x.name, other.name], name + "/add")
    y = _activate(g, y, s.options.get("activation", "linear"), name, s, i)
    return _Value(y if y == name else g.add("Identity", [y], name), x.shape)


def _upsample(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    x, stride = layers[-1], s.int("stride", 2)
    if stride < 1 or s.float("scale", 1.0) != 1.0:
        raise _error(s, i, "only upsampling (stride >= 1) with scale=1 is supported.")
    scales = g.const(f"upsample_{i}/scales", np.array([1, 1, stride, stride], np.float32))
    name = f"upsample_{i}"
    g.add("Resize", [x.name, "", scales], name, mode="nearest", coordinate_transformation_mode="asymmetric",
          nearest_mode="floor")
    return _Value(name, (*x.shape[:2], x.shape[2] * stride, x.shape[3] * stride))


def _connected(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    x = layers[-1]
    if s.int("batch_normalize", 0):
        raise _error(s, i, "batch_normalize=1 on a connected layer is not supported.")
    inputs, outputs = int(np.prod(x.shape[1:])), s.int("output", 1)
    bias = w.take(outputs, f"layer {i} biases")
    weights = w.take(outputs * inputs, f"layer {i} weights").reshape(outputs, inputs)
    name = f"connected_{i}"
    flat = g.add("Flatten", [x.name], f"{name}/flat", axis=1)
    y = g.add("Gemm", [flat, g.const(f"{name}/W", weights), g.const(f"{name}/B", bias)], f"{name}/gemm", transB=1)
    y = _activate(g, y, s.options.get("activation", "logistic"), name, s, i)
    return _Value(y if y == name else g.add("Identity", [y], name), (x.shape[0], outputs))


def _softmax(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    x = layers[-1]
    if s.int("groups", 1) != 1 or int(np.prod(x.shape[2:])) != 1:
        raise _error(s, i, f"softmax over an input of shape {list(x.shape)} with groups={s.int('groups', 1)}: "
                     "only softmax over features (after [connected] or [avgpool], groups=1) is supported.")
    flat = g.add("Flatten", [x.name], f"softmax_{i}/flat", axis=1) if len(x.shape) > 2 else x.name
    name = g.add("Softmax", [flat], f"softmax_{i}", axis=1)
    return _Value(name, (x.shape[0], int(np.prod(x.shape[1:]))))


def _dropout(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    return _Value(g.add("Identity", [layers[-1].name], f"dropout_{i}"), layers[-1].shape)


def _head(g: _Builder, s: Section, i: int, layers: list[_Value], w: Weights) -> _Value:
    """[yolo]/[region]: the raw tensor feeding the head becomes an output (see the module docstring)."""
    return _Value(g.add("Identity", [layers[-1].name], f"{s.kind}_{i}"), layers[-1].shape)


CONVERTERS: dict[str, Converter] = {
    "convolutional": _convolutional, "conv": _convolutional, "maxpool": _maxpool, "max": _maxpool,
    "avgpool": _avgpool, "avg": _avgpool, "route": _route, "shortcut": _shortcut, "upsample": _upsample,
    "connected": _connected, "softmax": _softmax, "soft": _softmax, "dropout": _dropout,
    "yolo": _head, "region": _head,
}


def _layer_ref(s: Section, i: int, ref: int, count: int) -> int:
    """darknet's layer references: negative is relative to this layer, else absolute."""
    index = i + ref if ref < 0 else ref
    if not 0 <= index < i:
        raise _error(s, i, f"refers to layer {ref}, which is not an earlier layer.")
    return index


def _shape_error(s: Section, i: int, what: str) -> ValidationError:
    return ValidationError(FIELD, f"with this input size, layer {i} [{s.kind}] (cfg line {s.line}) {what}; "
                           "use the [net] width/height or a size the network's strides divide.")


# ---- load -------------------------------------------------------------------------------------------------

def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Read the .cfg and .weights, convert each layer to ONNX, and load the same files in OpenCV."""
    cfg_path = exactly_one(model_dir, (".cfg",), "Darknet")
    weights_path = exactly_one(model_dir, (".weights",), "Darknet")
    sections = read_cfg(cfg_path)
    weights = read_weights(weights_path)
    net, layers = sections[0], sections[1:]
    for index, section in enumerate(layers):
        if section.kind not in CONVERTERS:
            raise _error(section, index, f"layer type [{section.kind}] is not supported. Supported: "
                         f"{', '.join(sorted(set(CONVERTERS) - {'conv', 'max', 'avg', 'soft'}))}.")
    spec = _input_spec(net, data_input_config)
    g = _Builder()
    values = [_Value(spec.name, spec.shape)]
    for index, section in enumerate(layers):
        values.append(CONVERTERS[section.kind](g, section, index, values, weights))
    heads = [i for i, s in enumerate(layers) if s.kind in HEADS]
    out_layers = heads or [len(layers) - 1]
    outputs = [TensorSpec(values[i + 1].name, values[i + 1].shape, "float32") for i in out_layers]
    notes = [f"{cfg_path.name} + {weights_path.name} converted layer by layer to ONNX opset {OPSET} "
             "(batch norm folded into the convolutions); reference: OpenCV's Darknet reader."]
    if heads:
        notes.append("outputs " + ", ".join(o.name for o in outputs) + " are the raw NCHW tensors feeding the "
                     "[yolo]/[region] layers (anchors*(5+classes) channels), not decoded boxes.")
    left = weights.values.size - weights.pos
    if left:
        notes.append(f"{left} floats after the last layer's weights in {weights_path.name} were not used.")
    model = _onnx_model(g, spec, outputs, cfg_path.stem)
    reference = _opencv_reference(_opencv_cfg(sections), weights_path, [_opencv_name(layers, i) for i in out_layers],
                                  spec, outputs)
    return ConvertedModel(
        onnx_model=model, inputs=[spec], outputs=outputs, reference=reference, framework="DARKNET",
        framework_version=".".join(map(str, weights.version)),
        converters={"modelkiln.frontends.darknet": "built-in", "onnx": onnx.__version__, "opencv": cv2.__version__},
        notes=notes,
    )


def _input_spec(net: Section, config: str | None) -> TensorSpec:
    default = (1, net.int("channels", 3), net.int("height", 416), net.int("width", 416))
    wanted = parse_data_input_config(config)
    if wanted is None:
        return TensorSpec("data", default, "float32")
    example = json.dumps({"data": list(default)})
    if len(wanted) != 1:
        raise ValidationError(FIELD, f"Darknet models take one input; got {[w.name for w in wanted]}. E.g. {example}.")
    shape = wanted[0].shape
    if len(shape) != 4 or shape[1] != default[1]:
        raise ValidationError(FIELD, f"{wanted[0].name} {list(shape)} must be NCHW with {default[1]} channels "
                              f"([net] channels); e.g. {example}.")
    if wanted[0].dtype != "float32":
        raise ValidationError(FIELD, f"Darknet models take float32 input, not {wanted[0].dtype}.")
    return TensorSpec(wanted[0].name, shape, "float32")


def _opencv_name(layers: list[Section], i: int) -> str:
    """What OpenCV's reader calls the last layer it makes for darknet layer i (its naming, dnn/darknet)."""
    s = layers[i]
    if s.kind in HEADS:  # the head's input: the layer before it
        return _opencv_name(layers, i - 1)
    kind = {"conv": "convolutional", "max": "maxpool", "avg": "avgpool", "soft": "softmax"}.get(s.kind, s.kind)
    activation = s.options.get("activation", "linear" if kind == "shortcut" else "logistic")
    if kind in ("convolutional", "connected", "shortcut") and activation != "linear":
        return f"{activation}_{i + 1}"  # OpenCV numbers a layer's activation one past the layer
    if kind == "convolutional":
        return f"bn_{i}" if s.int("batch_normalize", 0) else f"conv_{i}"
    if kind == "route":
        if len(s.ints("layers")) > 1:
            return f"concat_{i}"
        return f"slice_{i}" if s.int("groups", 1) > 1 else f"identity_{i}"
    return {"maxpool": "pool", "connected": "fullyConnected", "dropout": "identity"}.get(kind, kind) + f"_{i}"


def _opencv_cfg(sections: list[Section]) -> bytes:
    """The .cfg as OpenCV should read it: darknet's default activation (logistic) written out where the file
    leaves it unsaid, because OpenCV's reader defaults to linear there."""
    lines = []
    for s in sections:
        options = dict(s.options)
        if s.kind in ("convolutional", "conv", "connected"):
            options.setdefault("activation", "logistic")
        lines += [f"[{s.kind}]", *(f"{k}={v}" for k, v in options.items()), ""]
    return "\n".join(lines).encode()


def _opencv_reference(cfg: bytes, weights: Path, names: list[str], spec: TensorSpec, outputs: list[TensorSpec]):
    """A callable running the model in OpenCV's dnn module; the weights are read into memory now. Its outputs
    take the converted model's shapes: OpenCV keeps NCHW where darknet's [softmax] has flattened (a softmax
    right after [avgpool] is [1, C, 1, 1] in OpenCV and [1, C] in darknet and the ONNX form)."""
    try:
        net = cv2.dnn.readNetFromDarknet(np.frombuffer(cfg, np.uint8),
                                         np.frombuffer(weights.read_bytes(), np.uint8))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    except cv2.error as exc:
        raise CompilationError("convert", f"OpenCV, the reference for Darknet models, cannot read the files: "
                               f"{str(exc).strip().splitlines()[-1][:300]}",
                               "check that the .cfg and .weights belong together.") from None
    known = set(net.getLayerNames())
    missing = [n for n in names if n not in known]
    if missing:
        raise CompilationError("convert", f"OpenCV's reader has no layer {missing} to compare with.",
                               "report this model to Kiln's maintainers.")

    def run(feeds: Feeds) -> list[np.ndarray]:
        net.setInput(np.ascontiguousarray(feeds[spec.name], np.float32))
        outs = net.forward(names)
        return [np.array(o, np.float32).reshape(o.shape if o.size != np.prod(t.shape) else t.shape)
                for o, t in zip(outs, outputs)]

    return run


def _onnx_model(g: _Builder, spec: TensorSpec, outputs: list[TensorSpec], name: str) -> onnx.ModelProto:
    def info(t: TensorSpec) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape))
    graph = helper.make_graph(g.nodes, name, [info(spec)], [info(o) for o in outputs], initializer=g.initializers)
    return checked_onnx_model(graph, OPSET)

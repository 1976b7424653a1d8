"""tf2onnx handlers writing MediaPipe's custom TFLite operators in standard ONNX operators (tf2onnx leaves
custom operators as they are). Layout stays NHWC around them, as tf2onnx keeps TFLite's tensors."""
from __future__ import annotations

import functools

import numpy as np

from modelkiln.errors import CompilationError
from modelkiln.frontends.tflite_custom_ops import (
    ACTIVATIONS, Options, output_size, pool_padding, transpose_conv_padding,
)

REEXPORT = "re-export the model with TFLite builtin operators, or report it to Kiln's maintainers with the file."


def handlers(options: dict[str, tuple[str, Options]], errors: list[CompilationError]) -> dict[str, tuple]:
    """tf2onnx custom_op_handlers for the custom operators in options (first output tensor -> (op, options)).
    tf2onnx logs a handler's exception and leaves the node; Kiln's own errors are kept in errors to raise."""
    present = {op for op, _ in options.values()}
    return {f"TFL_{op}": (functools.partial(_lowering, LOWERINGS[op], options, errors), []) for op in present}


def _lowering(lower, options: dict, errors: list[CompilationError], ctx, node, name: str, args: list) -> None:
    try:
        lower(ctx, node, options[node.name][1])  # tf2onnx names a TFLite node after its first output tensor
    except CompilationError as exc:
        errors.append(exc)
        raise


def _transpose_conv_bias(ctx, node, op: Options) -> None:
    """Convolution2DTransposeBias(x NHWC, weights OHWI, bias) as ConvTranspose in NCHW between transposes."""
    x, weights, bias = node.input
    _, height, width, _ = _shape(ctx, x, node)
    _, kh, kw, _ = _shape(ctx, weights, node)
    (top, total_h), (left, total_w) = (transpose_conv_padding(height, kh, op.stride[0], op.padding),
                                       transpose_conv_padding(width, kw, op.stride[1], op.padding))
    nchw = ctx.make_node("Transpose", [x], attr={"perm": [0, 3, 1, 2]}).output[0]
    iohw = ctx.make_node("Transpose", [weights], attr={"perm": [3, 0, 1, 2]}).output[0]
    conv = ctx.make_node("ConvTranspose", [nchw, iohw, bias], attr={
        "strides": list(op.stride), "kernel_shape": [kh, kw],
        "pads": [top, left, total_h - top, total_w - left]}).output[0]
    _replace(ctx, node, [("Transpose", [conv], {"perm": [0, 2, 3, 1]})])


def _max_pool_argmax(ctx, node, op: Options) -> None:
    """MaxPoolingWithArgmax2D as strided slices of the (padded) input, one per window position: their Max is
    the value; the first position equal to it (row-major, as MediaPipe's strict >) gives index + 0.1."""
    x = node.input[0]
    _, height, width, _ = _shape(ctx, x, node)
    (kh, kw), (sh, sw) = op.window, op.stride
    out_h, out_w = output_size(height, kh, sh, op.padding), output_size(width, kw, sw, op.padding)
    top, left = pool_padding(height, kh, sh, out_h), pool_padding(width, kw, sw, out_w)
    bottom, right = max((out_h - 1) * sh + kh - height - top, 0), max((out_w - 1) * sw + kw - width - left, 0)
    if top or left or bottom or right:  # padding never wins: MediaPipe clamps the window to the input
        pads = _const(ctx, np.array([0, top, left, 0, 0, bottom, right, 0], np.int64))
        x = ctx.make_node("Pad", [x, pads, _const(ctx, np.array(-np.inf, np.float32))]).output[0]
    windows = [ctx.make_node("Slice", [x, _const(ctx, np.array([fy, fx], np.int64)),
                                       _const(ctx, np.array([fy + (out_h - 1) * sh + 1, fx + (out_w - 1) * sw + 1],
                                                            np.int64)),
                                       _const(ctx, np.array([1, 2], np.int64)),
                                       _const(ctx, np.array([sh, sw], np.int64))]).output[0]
               for fy in range(kh) for fx in range(kw)]
    best = ctx.make_node("Max", windows).output[0] if len(windows) > 1 else windows[0]
    position = [_const(ctx, np.float32(p) + np.float32(0.1)) for p in range(len(windows))]
    index = ctx.make_node("Where", [_equal(ctx, windows[-1], best), position[-1], position[-1]]).output[0]
    for p in reversed(range(len(windows) - 1)):
        index = ctx.make_node("Where", [_equal(ctx, windows[p], best), position[p], index]).output[0]
    low, high = ACTIVATIONS[op.activation]
    value = ("Identity", [best], {})
    if low is not None:
        bounds = [_const(ctx, np.float32(low))] + ([_const(ctx, np.float32(high))] if high is not None else [])
        value = ("Clip", [best, *bounds], {})
    _replace(ctx, node, [value, ("Identity", [index], {})])


def _max_unpooling(ctx, node, op: Options) -> None:
    """MaxUnpooling2D(values, indices) for non-overlapping windows: one masked copy of the values per window
    position, interleaved into the window-size-times larger output."""
    values, indices = node.input
    batch, height, width, channels = _shape(ctx, values, node)
    (kh, kw), (sh, sw) = op.window, op.stride
    if (kh, kw) != (sh, sw):
        raise CompilationError("convert", f"custom operator MaxUnpooling2D ({node.name}) has a {kh}x{kw} window "
                               f"with stride {sh}x{sw}; Kiln converts it only where they are equal.", REEXPORT)
    whole = ctx.make_node("Floor", [indices]).output[0]  # indices are window positions + 0.1
    zero = _const(ctx, np.float32(0))
    rows = []
    for fy in range(kh):
        planes = [_unsqueeze(ctx, ctx.make_node("Where", [_equal(ctx, whole, _const(ctx, np.float32(fy * kw + fx))),
                                                          values, zero]).output[0], 3) for fx in range(kw)]
        rows.append(_unsqueeze(ctx, ctx.make_node("Concat", planes, attr={"axis": 3}).output[0], 2))
    stacked = ctx.make_node("Concat", rows, attr={"axis": 2}).output[0]  # [N, H, kh, W, kw, C]
    shape = _const(ctx, np.array([batch, height * kh, width * kw, channels], np.int64))
    _replace(ctx, node, [("Reshape", [stacked, shape], {})])


LOWERINGS = {"Convolution2DTransposeBias": _transpose_conv_bias, "MaxPoolingWithArgmax2D": _max_pool_argmax,
             "MaxUnpooling2D": _max_unpooling}


def _shape(ctx, tensor: str, node) -> list[int]:
    shape = ctx.get_shape(tensor)
    if shape is None or len(shape) != 4 or any(d is None or d < 0 for d in shape):
        raise CompilationError("convert", f"custom operator {node.type[len('TFL_'):]} ({node.name}) needs static "
                               f"4-D shapes; its input {tensor} has shape {shape}.",
                               "give DataInputConfig every input's full shape.")
    return [int(d) for d in shape]


def _const(ctx, value: np.ndarray) -> str:
    from tf2onnx import utils
    return ctx.make_const(utils.make_name("kiln_const"), np.asarray(value)).output[0]


def _equal(ctx, a: str, b: str) -> str:
    return ctx.make_node("Equal", [a, b]).output[0]


def _unsqueeze(ctx, tensor: str, axis: int) -> str:
    return ctx.make_node("Unsqueeze", [tensor, _const(ctx, np.array([axis], np.int64))]).output[0]


def _replace(ctx, node, ops: list[tuple[str, list[str], dict]]) -> None:
    """Replace node by one new node per output (op_type, inputs, attributes), each writing that output."""
    outputs, shapes, dtypes = list(node.output), node.output_shapes, node.output_dtypes
    ctx.remove_node(node.name)
    for k, (op_type, inputs, attr) in enumerate(ops):
        ctx.make_node(op_type, inputs, attr=attr, outputs=[outputs[k]], shapes=[shapes[k]], dtypes=[dtypes[k]])

"""A plain numpy interpreter of MXNet symbol graphs: the reference Kiln checks its ONNX conversion against.

mxnet itself cannot be imported next to numpy 2, so this re-states each operator from MXNet's own
definitions (src/operator/*), independently of the ONNX converters in mxnet.py, computing in float64.
To support another operator, add a function here and a converter in mxnet.py under the same name.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from modelkiln.frontends.mxnet_params import Node, Symbol, attr_bool, attr_float, attr_tuple

Attrs = dict[str, str]
Op = Callable[[Attrs, list[np.ndarray]], np.ndarray]
Key = tuple[int, int]  # (node index, output index)


def run_symbol(symbol: Symbol, values: dict[str, np.ndarray]) -> dict[Key, np.ndarray]:
    """Every node's output 0, given the variables (inputs and parameters) by name."""
    out: dict[Key, np.ndarray] = {}
    for node in symbol.nodes:
        if node.op == "null":
            if node.name in values:
                out[(node.index, 0)] = np.asarray(values[node.name], np.float64)
            continue
        args = [out[key] for key in node.inputs if key in out]  # unbound labels are skipped
        try:
            out[(node.index, 0)] = OPS[node.op](node.attrs, args)
        except (ValueError, IndexError) as exc:
            raise ShapeError(node, str(exc)) from None
    return out


class ShapeError(ValueError):
    """An operator cannot run on the shapes it was given."""

    def __init__(self, node: Node, message: str) -> None:
        super().__init__(f"node {node.index} {node.name!r} ({node.op}): {message}")
        self.node = node


# ---- convolution, normalisation, pooling ------------------------------------------------------------------

def _windows(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], dilate: tuple[int, ...]) -> np.ndarray:
    """(N, C, Ho, Wo, KH, KW) views of an already padded NCHW array."""
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilate)]
    win = sliding_window_view(x, span, axis=(2, 3))
    return win[:, :, ::stride[0], ::stride[1], ::dilate[0], ::dilate[1]]


def convolution(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    x, w = args[0], args[1]
    kernel = attr_tuple(attrs, "kernel")
    stride = attr_tuple(attrs, "stride", (1, 1)) or (1, 1)
    dilate = attr_tuple(attrs, "dilate", (1, 1)) or (1, 1)
    pad = attr_tuple(attrs, "pad", (0, 0)) or (0, 0)
    groups = int(attrs.get("num_group", "1"))
    x = np.pad(x, [(0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])])
    win = _windows(x, kernel, stride, dilate)
    n, c, ho, wo = win.shape[:4]
    win = win.reshape(n, groups, c // groups, ho, wo, *kernel)
    w = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    y = np.einsum("ngchwij,gfcij->ngfhw", win, w).reshape(n, -1, ho, wo)
    if not attr_bool(attrs, "no_bias", False):
        y = y + args[2].reshape(1, -1, 1, 1)
    return y


def batch_norm(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    x, gamma, beta, mean, var = args
    if attr_bool(attrs, "fix_gamma", True):  # MXNet's default: gamma is read as 1 whatever was stored
        gamma = np.ones_like(gamma)
    axis = int(attrs.get("axis", "1")) % x.ndim
    shape = [1] * x.ndim
    shape[axis] = -1
    scale = gamma / np.sqrt(var + attr_float(attrs, "eps", 1e-3))
    return (x - mean.reshape(shape)) * scale.reshape(shape) + beta.reshape(shape)


def pooling(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    x = args[0]
    kind = attrs.get("pool_type", "max")
    if attr_bool(attrs, "global_pool", False):
        return x.max(axis=(2, 3), keepdims=True) if kind == "max" else x.mean(axis=(2, 3), keepdims=True)
    kernel = attr_tuple(attrs, "kernel")
    stride = attr_tuple(attrs, "stride", (1, 1)) or (1, 1)
    pad = attr_tuple(attrs, "pad", (0, 0)) or (0, 0)
    full = attrs.get("pooling_convention", "valid") == "full"
    size = x.shape[2:]
    out = [((s + 2 * p - k + (st - 1 if full else 0)) // st) + 1 for s, p, k, st in zip(size, pad, kernel, stride)]
    # pad the end far enough for the last (full-convention) window; padding never wins a max
    extra = [max(0, (o - 1) * st + k - (s + 2 * p)) for o, st, k, s, p in zip(out, stride, kernel, size, pad)]
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0), (pad[0], pad[0] + extra[0]), (pad[1], pad[1] + extra[1])], constant_values=fill)
    win = _windows(xp, kernel, stride, (1, 1))[:, :, :out[0], :out[1]]
    if kind == "max":
        return win.max(axis=(4, 5))
    total = win.sum(axis=(4, 5))
    if kind == "sum":
        return total
    counts = []
    for o, st, k, s, p in zip(out, stride, kernel, size, pad):
        start = np.arange(o) * st - p
        if attr_bool(attrs, "count_include_pad", True):  # MXNet: the window clipped to the padded input
            counts.append(np.minimum(start + k, s + p) - start)
        else:
            counts.append(np.minimum(start + k, s) - np.maximum(start, 0))
    return total / np.outer(counts[0], counts[1])


def fully_connected(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    x, w = args[0], args[1]
    if attr_bool(attrs, "flatten", True):
        x = x.reshape(x.shape[0], -1)
    y = x @ w.T
    return y if attr_bool(attrs, "no_bias", False) else y + args[2]


# ---- activations ------------------------------------------------------------------------------------------

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0), "sigmoid": _sigmoid, "tanh": np.tanh,
    "softrelu": lambda x: np.logaddexp(0, x), "softsign": lambda x: x / (1 + np.abs(x)),
}
SELU_ALPHA, SELU_LAMBDA = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def activation(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    return ACTIVATIONS[attrs.get("act_type", "relu")](args[0])


def leaky_relu(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    x, kind = args[0], attrs.get("act_type", "leaky")
    slope = attr_float(attrs, "slope", 0.25)
    if kind == "prelu":
        gamma = args[1].reshape((1, -1) + (1,) * (x.ndim - 2)) if args[1].size > 1 else args[1].reshape(())
        return np.where(x > 0, x, gamma * x)
    if kind == "elu":
        return np.where(x > 0, x, slope * np.expm1(np.minimum(x, 0)))
    if kind == "selu":
        return SELU_LAMBDA * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))
    if kind == "rrelu":  # inference uses the mean of the random slope's range
        slope = (attr_float(attrs, "lower_bound", 0.125) + attr_float(attrs, "upper_bound", 0.334)) / 2
    return np.where(x > 0, x, slope * x)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_output(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    x = args[0]
    if attr_bool(attrs, "preserve_shape", False):
        return _softmax(x, -1)
    if attr_bool(attrs, "multi_output", False):
        return _softmax(x, 1)
    return _softmax(x.reshape(x.shape[0], -1), 1).reshape(x.shape)  # over everything but the batch


def softmax_activation(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    x = args[0]
    if attrs.get("mode", "instance") == "channel":
        return _softmax(x, 1)
    return _softmax(x.reshape(x.shape[0], -1), 1).reshape(x.shape)


def softmax(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    return _softmax(args[0] / attr_float(attrs, "temperature", 1.0), int(attrs.get("axis", "-1")))


# ---- shapes -----------------------------------------------------------------------------------------------

def reshape_target(shape: tuple[int, ...], codes: tuple[int, ...], reverse: bool = False) -> tuple[int, ...]:
    """MXNet Reshape's special codes: 0 copy, -1 infer, -2 copy the rest, -3 merge two, -4 split one."""
    if reverse:
        return tuple(reversed(reshape_target(tuple(reversed(shape)), tuple(reversed(codes)))))
    out: list[int] = []
    src, i = 0, 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            out.append(shape[src])
            src += 1
        elif code == -1:
            out.append(-1)
            src += 1
        elif code == -2:
            out.extend(shape[src:])
            src = len(shape)
        elif code == -3:
            out.append(shape[src] * shape[src + 1])
            src += 2
        elif code == -4:
            a, b = codes[i + 1], codes[i + 2]
            a = shape[src] // b if a == -1 else a
            b = shape[src] // a if b == -1 else b
            out.extend([a, b])
            src += 1
            i += 2
        else:
            out.append(code)
            src += 1
        i += 1
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(shape)) // max(known, 1)
    if int(np.prod(out)) != int(np.prod(shape)):
        raise ValueError(f"cannot reshape {list(shape)} to {list(codes)}")
    return tuple(out)


def reshape(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    codes = attr_tuple(attrs, "shape") or attr_tuple(attrs, "target_shape")
    return args[0].reshape(reshape_target(args[0].shape, codes, attr_bool(attrs, "reverse", False)))


def transpose(attrs: Attrs, args: list[np.ndarray]) -> np.ndarray:
    return np.transpose(args[0], attr_tuple(attrs, "axes") or None)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Op:
    return lambda attrs, args: fn(args[0], args[1])


def _scalar(fn: Callable[[np.ndarray, float], np.ndarray]) -> Op:
    return lambda attrs, args: fn(args[0], attr_float(attrs, "scalar", 0.0))


BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
          "max": np.maximum, "min": np.minimum}
BINARY_OPS = {  # MXNet's spellings of each elementwise/broadcast binary op
    "add": ("elemwise_add", "_Plus", "_plus", "_add", "broadcast_add", "broadcast_plus"),
    "sub": ("elemwise_sub", "_Minus", "_minus", "_sub", "broadcast_sub", "broadcast_minus"),
    "mul": ("elemwise_mul", "_Mul", "_mul", "broadcast_mul"),
    "div": ("elemwise_div", "_Div", "_div", "broadcast_div"),
    "max": ("_maximum", "_Maximum", "broadcast_maximum"),
    "min": ("_minimum", "_Minimum", "broadcast_minimum"),
}
SCALAR_OPS = {  # op -> (binary kind, scalar on the left)
    "_plus_scalar": ("add", False), "_PlusScalar": ("add", False),
    "_minus_scalar": ("sub", False), "_MinusScalar": ("sub", False),
    "_rminus_scalar": ("sub", True), "_RMinusScalar": ("sub", True),
    "_mul_scalar": ("mul", False), "_MulScalar": ("mul", False),
    "_div_scalar": ("div", False), "_DivScalar": ("div", False),
    "_rdiv_scalar": ("div", True), "_RDivScalar": ("div", True),
    "_maximum_scalar": ("max", False), "_minimum_scalar": ("min", False),
}

OPS: dict[str, Op] = {
    "Convolution": convolution, "BatchNorm": batch_norm, "Pooling": pooling, "FullyConnected": fully_connected,
    "Activation": activation, "LeakyReLU": leaky_relu,
    "relu": lambda a, x: np.maximum(x[0], 0), "sigmoid": lambda a, x: _sigmoid(x[0]),
    "tanh": lambda a, x: np.tanh(x[0]),
    "Flatten": lambda a, x: x[0].reshape(x[0].shape[0], -1), "Dropout": lambda a, x: x[0],
    "Concat": lambda a, x: np.concatenate(x, axis=int(a.get("dim", "1"))),
    "SoftmaxOutput": softmax_output, "SoftmaxActivation": softmax_activation, "softmax": softmax,
    "LinearRegressionOutput": lambda a, x: x[0], "LogisticRegressionOutput": lambda a, x: _sigmoid(x[0]),
    "Reshape": reshape, "transpose": transpose,
    "clip": lambda a, x: np.clip(x[0], attr_float(a, "a_min", -np.inf), attr_float(a, "a_max", np.inf)),
    "_power_scalar": _scalar(np.power),
}
OPS["concat"], OPS["flatten"], OPS["reshape"] = OPS["Concat"], OPS["Flatten"], OPS["Reshape"]
for _kind, _names in BINARY_OPS.items():
    OPS.update({name: _binary(BINARY[_kind]) for name in _names})
for _name, (_kind, _left) in SCALAR_OPS.items():
    OPS[_name] = _scalar((lambda f: lambda x, s: f(s, x))(BINARY[_kind]) if _left else BINARY[_kind])

"""MediaPipe's custom TFLite operators (its op resolver registers them; LiteRT alone has no kernel for them):
Convolution2DTransposeBias, MaxPoolingWithArgmax2D and MaxUnpooling2D. For each: its options (the raw C
struct MediaPipe reads from custom_options), a tf2onnx handler writing it in standard ONNX operators, and a
numpy kernel following MediaPipe's reference loops, which stands in for the missing LiteRT kernel in the
reference run. The two must agree: that is what verification checks."""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modelkiln.errors import CompilationError

SAME, VALID = 1, 2  # TfLitePadding
ACTIVATIONS = {0: (None, None), 1: (0.0, None), 2: (-1.0, 1.0), 3: (0.0, 6.0)}  # TfLiteFusedActivation -> clip


@dataclass(frozen=True)
class Options:
    """TfLiteTransposeConvParams / TfLitePoolParams, as MediaPipe's kernels read them."""

    padding: int
    stride: tuple[int, int]  # (height, width)
    window: tuple[int, int] = (0, 0)  # (height, width); pooling only (the transpose conv's comes from its kernel)
    activation: int = 0


def parse_options(op: str, raw: bytes | None) -> Options:
    """The operator's options from its custom_options bytes: the C struct's leading int32 fields."""
    fields = 3 if op == "Convolution2DTransposeBias" else 6
    if raw is None or len(raw) < 4 * fields:
        raise CompilationError("convert", f"custom operator {op} has {len(raw or b'')} bytes of options; "
                               f"MediaPipe's kernel reads {4 * fields}.",
                               "the .tflite file is damaged or not MediaPipe's: export the model again.")
    values = struct.unpack_from(f"<{fields}i", raw)
    padding, stride_w, stride_h = values[:3]
    options = Options(padding, (stride_h, stride_w))
    if fields == 6:
        options = Options(padding, (stride_h, stride_w), (values[4], values[3]), values[5])
    if padding not in (SAME, VALID) or min(options.stride) < 1 or options.activation not in ACTIVATIONS:
        raise CompilationError("convert", f"custom operator {op} has options Kiln does not know: {options}.",
                               "the .tflite file is damaged or not MediaPipe's: export the model again.")
    return options


def output_size(size: int, window: int, stride: int, padding: int) -> int:
    """TFLite's windowed output size (pooling)."""
    return (size + stride - 1) // stride if padding == SAME else (size - window + stride) // stride


def pool_padding(size: int, window: int, stride: int, out: int) -> int:
    """TFLite's ComputePadding: the leading padding of a window sliding over size to give out."""
    return max(int(((out - 1) * stride + window - size) / 2), 0)  # C's division truncates


def transpose_conv_padding(size: int, window: int, stride: int, padding: int) -> tuple[int, int]:
    """(leading, total) padding of MediaPipe's transposed convolution; output = stride*(size-1)+window-total."""
    total = max(0, window - (size - 1) % stride - 1) if padding == SAME else 0
    return total // 2, total


# --- numpy kernels: the reference for what LiteRT cannot run -------------------------------------------------

def transpose_conv_bias(args: list[np.ndarray], options: Options) -> list[np.ndarray]:
    """Convolution2DTransposeBias(input NHWC, weights OHWI, bias O): every input pixel adds its weighted
    kernel at stride steps; contributions falling outside the output are dropped."""
    x, w, b = (a.astype(np.float32) for a in args)
    (n, h, wd, _), (o, kh, kw, _) = x.shape, w.shape
    (sh, sw) = options.stride
    (top, total_h), (left, total_w) = (transpose_conv_padding(h, kh, sh, options.padding),
                                       transpose_conv_padding(wd, kw, sw, options.padding))
    full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, o), np.float32)
    for fy in range(kh):
        for fx in range(kw):
            full[:, fy:fy + (h - 1) * sh + 1:sh, fx:fx + (wd - 1) * sw + 1:sw] += np.einsum(
                "nhwi,oi->nhwo", x, w[:, fy, fx, :])
    out_h, out_w = sh * (h - 1) + kh - total_h, sw * (wd - 1) + kw - total_w
    return [full[:, top:top + out_h, left:left + out_w] + b]


def max_pool_argmax(args: list[np.ndarray], options: Options) -> list[np.ndarray]:
    """MaxPoolingWithArgmax2D: the window's maximum (the first, in row-major order, on ties) and its position
    in the window, fy * window_width + fx + 0.1, as float32 (MediaPipe's indices)."""
    x = args[0].astype(np.float32)
    (kh, kw), (sh, sw) = options.window, options.stride
    out_h, out_w = (output_size(x.shape[1], kh, sh, options.padding), output_size(x.shape[2], kw, sw, options.padding))
    top, left = pool_padding(x.shape[1], kh, sh, out_h), pool_padding(x.shape[2], kw, sw, out_w)
    padded = _padded(x, top, left, (out_h - 1) * sh + kh, (out_w - 1) * sw + kw, -np.inf)
    best = np.full((x.shape[0], out_h, out_w, x.shape[3]), -np.inf, np.float32)
    where = np.zeros(best.shape, np.int32)
    for fy in range(kh):
        for fx in range(kw):
            window = padded[:, fy:fy + (out_h - 1) * sh + 1:sh, fx:fx + (out_w - 1) * sw + 1:sw]
            larger = window > best
            best, where = np.where(larger, window, best), np.where(larger, fy * kw + fx, where)
    low, high = ACTIVATIONS[options.activation]
    return [np.clip(best, low, high) if low is not None else best, where.astype(np.float32) + np.float32(0.1)]


def max_unpooling(args: list[np.ndarray], options: Options) -> list[np.ndarray]:
    """MaxUnpooling2D(values, indices): each value written back at its window position (zero elsewhere);
    the output is window-size times the input."""
    values, indices = args[0].astype(np.float32), args[1]
    n, h, w, c = values.shape
    (kh, kw), (sh, sw) = options.window, options.stride
    out = np.zeros((n, h * kh, w * kw, c), np.float32)
    top, left = pool_padding(h * kh, kh, sh, h), pool_padding(w * kw, kw, sw, w)
    index = indices.astype(np.int32)  # C's float -> int truncation, as MediaPipe's kernel
    ys = np.arange(h)[None, :, None, None] * sh - top + index // kw
    xs = np.arange(w)[None, None, :, None] * sw - left + index % kw
    inside = (ys >= 0) & (ys < h * kh) & (xs >= 0) & (xs < w * kw)
    nn, _, _, cc = np.indices(values.shape)
    out[nn[inside], ys[inside], xs[inside], cc[inside]] = values[inside]
    return [out]


def _padded(x: np.ndarray, top: int, left: int, height: int, width: int, fill: float) -> np.ndarray:
    padded = np.full((x.shape[0], max(height, top + x.shape[1]), max(width, left + x.shape[2]), x.shape[3]),
                     fill, x.dtype)
    padded[:, top:top + x.shape[1], left:left + x.shape[2]] = x
    return padded


KERNELS: dict[str, Callable[[list[np.ndarray], Options], list[np.ndarray]]] = {
    "Convolution2DTransposeBias": transpose_conv_bias,
    "MaxPoolingWithArgmax2D": max_pool_argmax,
    "MaxUnpooling2D": max_unpooling,
}

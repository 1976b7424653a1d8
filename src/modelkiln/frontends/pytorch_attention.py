"""ONNX symbolics for PyTorch's fused transformer kernels, which torch.onnx's TorchScript exporter lacks.

nn.MultiheadAttention and nn.TransformerEncoderLayer in eval mode under torch.no_grad() take a "fast path"
(`aten::_native_multi_head_attention`, `aten::_transformer_encoder_layer_fwd`), so traced ViTs and BERT-style
encoders hold these ops. Each symbolic writes out torch's own math (attention.cpp, transformer.cpp) in
standard ONNX operators: MatMul, Softmax, LayerNormalization. nn.TransformerEncoder given a padding mask runs
its layers on nested tensors (`aten::_nested_tensor_from_mask` ... `aten::to_padded_tensor`): exported as the
same layers on the padded tensor with that mask on the keys, padding positions set to the padding value.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch.onnx import symbolic_helper

FUSED_OPS = ("aten::_native_multi_head_attention", "aten::_transformer_encoder_layer_fwd",
             "aten::_nested_tensor_from_mask", "aten::to_padded_tensor")
_DTYPES = {"Half": torch.float16, "Double": torch.float64, "BFloat16": torch.bfloat16}
_registered: set[int] = set()
# A "nested" value of the graph being exported (by Value.unique()) -> its (B, S) mask of valid tokens.
_valid_tokens: dict[int, object] = {}


@contextlib.contextmanager
def symbolics(opset: int) -> Iterator[None]:
    """Within this block torch.onnx.export (TorchScript exporter) converts the fused transformer ops."""
    if opset not in _registered:
        for name, fn in zip(FUSED_OPS, (native_multi_head_attention, transformer_encoder_layer_fwd,
                                        nested_tensor_from_mask, to_padded_tensor)):
            torch.onnx.register_custom_op_symbolic(name, fn, opset)
        _registered.add(opset)
    _valid_tokens.clear()
    try:
        yield
    finally:
        _valid_tokens.clear()


@symbolic_helper.parse_args("v", "v", "v", "i", "i", "v", "v", "v", "v", "v", "b", "b", "i")
def native_multi_head_attention(g, query, key, value, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight,
                                proj_bias, mask, need_weights, average_attn_weights, mask_type):
    """aten::_native_multi_head_attention: (attention output, weights) for batch-first (B, L, E) inputs."""
    out, weights = _attention(g, query, key, value, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight,
                              proj_bias, mask, mask_type)
    if need_weights and average_attn_weights:
        weights = g.op("ReduceMean", weights, axes_i=[1], keepdims_i=0)
    return out, weights


@symbolic_helper.parse_args("v", "i", "i", "v", "v", "v", "v", "b", "b", "f",
                            "v", "v", "v", "v", "v", "v", "v", "v", "v", "i")
def transformer_encoder_layer_fwd(g, src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                  use_gelu, norm_first, eps, norm1_weight, norm1_bias, norm2_weight, norm2_bias,
                                  ffn1_weight, ffn1_bias, ffn2_weight, ffn2_bias, mask=None, mask_type=None):
    """aten::_transformer_encoder_layer_fwd: one post-norm (or pre-norm) encoder layer, as transformer.cpp."""
    valid = _valid_tokens.get(src.unique())
    if valid is not None and symbolic_helper._is_none(mask):  # a nested batch: mask its padding keys
        mask, mask_type = g.op("Not", valid), 1
    def norm(x, weight, bias):
        return g.op("LayerNormalization", x, weight, bias, axis_i=-1, epsilon_f=eps)

    x = norm(src, norm1_weight, norm1_bias) if norm_first else src
    x, _ = _attention(g, x, x, x, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                      mask, mask_type)
    x = g.op("Add", x, src)
    if not norm_first:
        x = norm(x, norm1_weight, norm1_bias)
    residual = x
    if norm_first:
        x = norm(x, norm2_weight, norm2_bias)
    hidden = _linear(g, x, ffn1_weight, ffn1_bias)
    hidden = _gelu(g, hidden, _dtype(src)) if use_gelu else g.op("Relu", hidden)
    x = g.op("Add", _linear(g, hidden, ffn2_weight, ffn2_bias), residual)
    out = norm(x, norm2_weight, norm2_bias) if not norm_first else x
    if valid is not None:
        _valid_tokens[out.unique()] = valid
    return out


@symbolic_helper.parse_args("v", "v", "b")
def nested_tensor_from_mask(g, t, mask, mask_check):
    """aten::_nested_tensor_from_mask: the padded tensor itself, remembering which tokens are valid: as torch
    does, the first mask.sum(1) tokens of each row (torch assumes the padding is at the end)."""
    out = g.op("Identity", t)
    count = g.op("ReduceSum", g.op("Cast", mask, to_i=7), _ints(g, [1]), keepdims_i=1)  # 7: INT64
    length = g.op("Gather", g.op("Shape", t), _ints(g, [1]))
    positions = g.op("Range", _ints(g, 0), g.op("Squeeze", length), _ints(g, 1))
    _valid_tokens[out.unique()] = g.op("Less", positions, count)
    return out


@symbolic_helper.parse_args("v", "f", "v")
def to_padded_tensor(g, x, padding, output_size):
    """aten::to_padded_tensor of a batch made by _nested_tensor_from_mask: padding where tokens were not valid."""
    valid = _valid_tokens.get(x.unique())
    if valid is None:
        raise torch.onnx.errors.SymbolicValueError(
            "to_padded_tensor of a nested tensor not made by _nested_tensor_from_mask", x)
    keep = g.op("Unsqueeze", valid, _ints(g, [2]))
    return g.op("Where", keep, x, _scalar(g, padding, _dtype(x)))


def _attention(g, query, key, value, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
               mask, mask_type):
    head_dim = embed_dim // num_heads
    dtype = _dtype(query)
    sizes = _ints(g, [embed_dim] * 3)
    weights = g.op("Split", qkv_weight, sizes, axis_i=0, outputs=3)
    biases = g.op("Split", qkv_bias, sizes, axis_i=0, outputs=3)

    def heads(x, weight, bias):  # (B, L, E) -> (B, H, L, Dh)
        y = g.op("Reshape", _linear(g, x, weight, bias), _ints(g, [0, -1, num_heads, head_dim]))
        return g.op("Transpose", y, perm_i=[0, 2, 1, 3])

    # torch scales q after the bias: q = (x Wq + bq) / sqrt(Dh)
    q = g.op("Div", heads(query, weights[0], biases[0]), _scalar(g, math.sqrt(head_dim), dtype))
    k = heads(key, weights[1], biases[1])
    v = heads(value, weights[2], biases[2])
    scores = g.op("MatMul", q, g.op("Transpose", k, perm_i=[0, 1, 3, 2]))
    if not symbolic_helper._is_none(mask):  # an absent Tensor? is a None-typed value, not None
        scores = g.op("Add", scores, _additive_mask(g, mask, mask_type, dtype))
    probs = g.op("Softmax", scores, axis_i=-1)
    context = g.op("Transpose", g.op("MatMul", probs, v), perm_i=[0, 2, 1, 3])
    context = g.op("Reshape", context, _ints(g, [0, -1, embed_dim]))
    return _linear(g, context, proj_weight, proj_bias), probs


def _additive_mask(g, mask, mask_type, dtype):
    """A mask as a term added to the (B, H, L, S) scores: boolean True (masked) -> -inf; float masks as given."""
    if mask.type().scalarType() == "Bool":
        mask = g.op("Where", mask, _scalar(g, float("-inf"), dtype), _scalar(g, 0.0, dtype))
    if mask_type == 1:  # key padding mask (B, S)
        return g.op("Unsqueeze", mask, _ints(g, [1, 2]))
    if mask_type == 0:  # attention mask (L, S)
        return g.op("Unsqueeze", mask, _ints(g, [0, 1]))
    return mask  # type 2: already (B, H, L, S)


def _linear(g, x, weight, bias):
    return g.op("Add", g.op("MatMul", x, g.op("Transpose", weight, perm_i=[1, 0])), bias)


def _gelu(g, x, dtype: torch.dtype):
    """Exact (erf) GELU: the fast path applies it whatever the module's `approximate` says."""
    erf = g.op("Erf", g.op("Div", x, _scalar(g, math.sqrt(2.0), dtype)))
    return g.op("Mul", g.op("Mul", x, _scalar(g, 0.5, dtype)), g.op("Add", erf, _scalar(g, 1.0, dtype)))


def _dtype(value) -> torch.dtype:
    return _DTYPES.get(value.type().scalarType() or "Float", torch.float32)


def _ints(g, values: list[int] | int):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _scalar(g, value: float, dtype: torch.dtype):
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

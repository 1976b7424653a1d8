"""A .tflite flatbuffer read and rewritten with LiteRT's generated schema (object API): sparse constants made
dense for tf2onnx, custom operators listed and cut out for a staged reference run, quantization looked up, and
a dynamic-range (weight-only) quantized model's float twin made for its reference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelkiln.frontends.base import Quantization

FILE_IDENTIFIER = b"TFL3"
FLOAT32 = 0  # TensorType
DENSE = 0  # DimensionType: DENSE, SPARSE_CSR
# TensorType enum value -> numpy dtype, for the types a constant or a custom operator's tensor may have.
NUMPY_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
               9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16}


def schema():
    from ai_edge_litert import schema_py_generated
    return schema_py_generated


def read_model(data: bytes):
    """The flatbuffer as a mutable schema ModelT."""
    return schema().ModelT.InitFromPackedBuf(bytearray(data), 0)


def write_model(model) -> bytes:
    """A ModelT serialized as a .tflite flatbuffer."""
    import flatbuffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def opcode_name(model, op) -> str:
    """An operator's builtin name (e.g. "CONV_2D"), or its custom code for custom operators."""
    builtin = _builtin(model, op)
    if builtin == schema().BuiltinOperator.CUSTOM:
        return (model.operatorCodes[op.opcodeIndex].customCode or b"").decode()
    return next(k for k, v in vars(schema().BuiltinOperator).items() if v == builtin and not k.startswith("_"))


def _builtin(model, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)  # old files only fill the deprecated byte


def custom_ops(model) -> list:
    """The main subgraph's custom operators, in execution (topological) order."""
    return [op for op in model.subgraphs[0].operators if _builtin(model, op) == schema().BuiltinOperator.CUSTOM]


def tensor_name(model, index: int) -> str:
    return model.subgraphs[0].tensors[index].name.decode()


def constant(model, index: int) -> np.ndarray | None:
    """A tensor's constant value: from its buffer, or a DEQUANTIZE of such a constant (float16 or int8 weights,
    dequantized here as LiteRT does); None for a computed tensor."""
    tensor = model.subgraphs[0].tensors[index]
    value = _buffer_value(model, tensor)
    producer = _producer(model, index)
    if value is not None or producer is None or opcode_name(model, producer) != "DEQUANTIZE":
        return value
    source = model.subgraphs[0].tensors[int(producer.inputs[0])]
    value = _buffer_value(model, source)
    if value is None or value.dtype == np.float16:
        return None if value is None else value.astype(np.float32)
    return _dequantized(value, source.quantization)


def _dequantized(value: np.ndarray, quant) -> np.ndarray | None:
    """scale * (q - zero point), per channel along quantizedDimension where the scales are; None without scales."""
    if quant is None or quant.scale is None or not len(quant.scale):
        return None
    shape = [1] * value.ndim
    if len(quant.scale) > 1:  # per-channel scales along quantizedDimension
        shape[quant.quantizedDimension] = -1
    scale = np.asarray(quant.scale, np.float32).reshape(shape)
    zeros = quant.zeroPoint if quant.zeroPoint is not None and len(quant.zeroPoint) else [0]
    zero = np.asarray(zeros, np.int64).reshape(shape if len(zeros) > 1 else [1] * value.ndim)
    return ((value.astype(np.int64) - zero) * scale).astype(np.float32)


def _quantized_integer(tensor) -> bool:
    """An integer tensor with quantization scales: an int8 weight or activation."""
    dtype, quant = NUMPY_TYPES.get(tensor.type), tensor.quantization
    return dtype is not None and np.dtype(dtype).kind in "iu" and quant is not None and quant.scale is not None \
        and len(quant.scale) > 0


def _is_constant(model, tensor) -> bool:
    return tensor.buffer > 0 and model.buffers[tensor.buffer].data is not None \
        and len(model.buffers[tensor.buffer].data) > 0


def hybrid_weights(model) -> list[tuple[int, int]]:
    """(subgraph, tensor) of each quantized integer constant that a float operator reads directly: a dynamic-range
    (weight-only) quantized model, which LiteRT runs with hybrid kernels. Empty where any activation is quantized
    (a full-integer model: its int8 arithmetic is the model's)."""
    found = []
    for g, graph in enumerate(model.subgraphs):
        if any(_quantized_integer(t) and not _is_constant(model, t) for t in graph.tensors):
            return []
        for op in graph.operators:
            if _builtin(model, op) == schema().BuiltinOperator.DEQUANTIZE:
                continue  # a stored weight LiteRT dequantizes itself before a float kernel: no hybrid kernel
            float_out = all(t < 0 or graph.tensors[t].type == FLOAT32 for t in op.outputs)
            found += [(g, int(t)) for t in op.inputs if t >= 0 and float_out
                      and _quantized_integer(graph.tensors[t]) and _is_constant(model, graph.tensors[t])]
    return list(dict.fromkeys(found))


def float_twin(data: bytes) -> bytes:
    """The model with its hybrid weights (see hybrid_weights) stored as float32 scale * (q - zero point): LiteRT
    then runs float kernels on exactly the values the int8 weights mean, and so does tf2onnx's conversion of it.
    Sparse constants made dense."""
    model = read_model(data)
    densify(model)
    for g, index in hybrid_weights(model):
        graph = model.subgraphs[g]
        for op in graph.operators:  # else tf2onnx quantizes a float FULLY_CONNECTED's inputs (DynamicQuantizeLinear)
            if index in [int(t) for t in op.inputs] and hasattr(op.builtinOptions, "asymmetricQuantizeInputs"):
                op.builtinOptions.asymmetricQuantizeInputs = False
        tensor = graph.tensors[index]
        value = _dequantized(_buffer_value(model, tensor), tensor.quantization)
        buffer = schema().BufferT()  # a new buffer: the int8 one may be shared with another tensor
        buffer.data = np.frombuffer(value.tobytes(), np.uint8)
        model.buffers.append(buffer)
        tensor.buffer, tensor.type, tensor.quantization = len(model.buffers) - 1, FLOAT32, None
    return write_model(model)


def _buffer_value(model, tensor) -> np.ndarray | None:
    data = model.buffers[tensor.buffer].data if tensor.buffer > 0 else None
    if data is None or not len(data) or tensor.sparsity is not None:
        return None
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), NUMPY_TYPES[tensor.type]).reshape(tensor.shape)


def _producer(model, index: int):
    """The main subgraph's operator computing tensor index, None for inputs and constants."""
    return next((op for op in model.subgraphs[0].operators if index in [int(t) for t in op.outputs]), None)


def densify(model) -> int:
    """Make every sparse constant dense and drop the DENSIFY operators that fed on them (tf2onnx reads the
    compressed buffer as if dense, "cannot reshape array of size 96 into shape (16,1,1,24)"). Returns how many."""
    count = 0
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            if tensor.sparsity is not None and tensor.buffer > 0 and model.buffers[tensor.buffer].data is not None:
                dense = _dense_values(tensor, model.buffers[tensor.buffer].data)
                model.buffers[tensor.buffer].data = np.frombuffer(dense.tobytes(), np.uint8)
                tensor.sparsity = None
                count += 1
        densifies = [op for op in graph.operators if _builtin(model, op) == schema().BuiltinOperator.DENSIFY]
        forward = {int(op.outputs[0]): int(op.inputs[0]) for op in densifies}  # now dense: read it directly
        graph.operators = [op for op in graph.operators if not any(op is d for d in densifies)]
        for op in graph.operators:
            op.inputs = np.array([forward.get(int(i), int(i)) for i in op.inputs], np.int32)
        graph.outputs = np.array([forward.get(int(i), int(i)) for i in graph.outputs], np.int32)
    return count


def _dense_values(tensor, data) -> np.ndarray:
    """TFLite's sparse format decoded (as its FormatConverter does): dimensions walked in traversal order, DENSE
    ones in full, SPARSE_CSR ones by segments and indices; block dimensions folded back into their own."""
    sparsity, shape = tensor.sparsity, [int(d) for d in tensor.shape]
    values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), NUMPY_TYPES[tensor.type])
    order = [int(d) for d in sparsity.traversalOrder]
    rank = len(shape)
    positions = np.zeros(1, np.int64)  # per walked element: its index into the next level (finally: into values)
    coords = np.zeros((1, len(order)), np.int64)
    for level, dim in enumerate(order):
        meta = sparsity.dimMetadata[level]
        if meta.format == DENSE:
            size = int(meta.denseSize)
            positions = (positions[:, None] * size + np.arange(size)[None, :]).ravel()
            coords = np.repeat(coords, size, axis=0)
            coords[:, dim] = np.tile(np.arange(size), len(coords) // size)
        else:
            segments = np.asarray(meta.arraySegments.values, np.int64)
            indices = np.asarray(meta.arrayIndices.values, np.int64)
            starts, counts = segments[positions], segments[positions + 1] - segments[positions]
            positions = np.repeat(starts, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts,
                                                                                        counts)
            coords = np.repeat(coords, counts, axis=0)
            coords[:, dim] = indices[positions]
    dense_coords = coords[:, :rank].copy()
    for j, dim in enumerate(sparsity.blockMap if sparsity.blockMap is not None else []):
        block = int(sparsity.dimMetadata[order.index(rank + j)].denseSize)
        dense_coords[:, int(dim)] = dense_coords[:, int(dim)] * block + coords[:, rank + j]
    dense = np.zeros(shape, values.dtype)
    dense[tuple(dense_coords.T)] = values[positions]
    return dense


@dataclass
class CutModel:
    """The model with its custom operators removed: each one's outputs became subgraph inputs and its computed
    inputs subgraph outputs, so LiteRT runs everything around them and Kiln runs them in between."""

    data: bytes
    inputs: list[int]  # the original subgraph inputs (tensor indices)
    outputs: list[int]  # the original subgraph outputs
    ops: list  # the custom operators (OperatorT), in execution order
    fed: list[int]  # tensors the custom operators produce, now fed in


def cut_custom_ops(model, names: set[str]) -> CutModel:
    """A copy of the model's bytes without its custom operators of those names (see CutModel); model is left
    unchanged."""
    graph = model.subgraphs[0]
    ops = [op for op in custom_ops(model) if opcode_name(model, op) in names]
    inputs, outputs = [int(i) for i in graph.inputs], [int(i) for i in graph.outputs]
    fed = [int(t) for op in ops for t in op.outputs if t >= 0]
    computed = [int(t) for op in ops for t in op.inputs if t >= 0 and constant(model, int(t)) is None]
    kept, graph.operators = graph.operators, [op for op in graph.operators if not any(op is c for c in ops)]
    graph.inputs = np.array(inputs + fed, np.int32)
    graph.outputs = np.array(outputs + [t for t in dict.fromkeys(computed) if t not in outputs and t not in fed],
                             np.int32)
    try:
        data = write_model(model)
    finally:
        graph.operators, graph.inputs, graph.outputs = kept, np.array(inputs, np.int32), np.array(outputs, np.int32)
    return CutModel(data, inputs, outputs, ops, fed)


def quantization(model, index: int) -> Quantization | None:
    """A tensor's per-tensor quantization; a float tensor that a DEQUANTIZE computes from a quantized integer
    tensor reports that tensor's. None otherwise (float, float16 weights, or per-channel scales)."""
    graph = model.subgraphs[0]
    tensor = graph.tensors[index]
    own = _per_tensor(tensor)
    if own is not None or NUMPY_TYPES.get(tensor.type) is not np.float32:
        return own
    producer = _producer(model, index)
    if producer is not None and opcode_name(model, producer) == "DEQUANTIZE":
        return _per_tensor(graph.tensors[int(producer.inputs[0])])
    return None


def _per_tensor(tensor) -> Quantization | None:
    quant, dtype = tensor.quantization, NUMPY_TYPES.get(tensor.type)
    if dtype is None or np.dtype(dtype).kind not in "iu" or quant is None or quant.scale is None \
            or len(quant.scale) != 1:  # per-channel scales: weights, never a model's input or output
        return None
    zero = int(quant.zeroPoint[0]) if quant.zeroPoint is not None and len(quant.zeroPoint) else 0
    return Quantization(float(quant.scale[0]), zero, np.dtype(dtype).name)

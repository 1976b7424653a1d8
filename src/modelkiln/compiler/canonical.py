"""The ONNX form IREE and TVM are given: one canonical graph, whatever exporter wrote the model.

Their ONNX importers convert some operators only at newer opsets (IREE 3.13 refuses BatchNormalization at opset 13
and GreaterOrEqual below 16), and TVM's Relax importer cannot give shapes to tensors computed from other tensors'
shapes (Shape -> Gather -> Concat -> Reshape, slices of a shape's half, arange grids). Kiln pins every input shape,
so all of that is constant:
0. initializers an old exporter also listed as graph inputs become plain constants;
1. the opset is raised to CANONICAL_OPSET (onnx.version_converter; a newer opset is kept);
2. inference BatchNormalization is folded into the Conv or Gemm before it, else becomes Mul + Add by constants;
3. onnxruntime's basic graph optimizations fold constants (shape subgraphs included, the shapes being static) and
   drop no-op nodes; the graph is saved back as plain ONNX (optimized_model_filepath);
4. shapes are inferred again, so every tensor the backends see has a static shape.
"""
from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

CANONICAL_OPSET = 17  # the opset IREE 3.13's and TVM 0.27's ONNX importers convert most operators at
DEFAULT_DOMAINS = ("", "ai.onnx")
MIN_IR = 8  # the IR version opset 17 needs
MAX_IR = 10  # the newest IR onnxruntime 1.31 loads
LARGE_BYTES = 1 << 30  # beyond this, onnxruntime writes initializers to a side file (protobuf's 2 GiB limit)
COMMAND = "kiln canonical ONNX (opset 17, BatchNormalization folded, constants and shapes folded)"


@dataclass
class Canonical:
    """The canonical model and what was changed to get it."""

    model: onnx.ModelProto
    opset: tuple[int, int]  # (before, after)
    batchnorms: Counter = field(default_factory=Counter)  # "folded into Conv" / ... / "rewritten as Mul+Add" -> count
    nodes: tuple[int, int] = (0, 0)  # node count before, after
    weights_as_inputs: int = 0  # initializers that were also listed as graph inputs (IR 3 files)
    skipped: list[str] = field(default_factory=list)  # steps that could not be applied, and why
    seconds: float = 0.0

    def note(self) -> str:
        """One line for the report: what the backend was given instead of the model as written."""
        done = []
        if self.weights_as_inputs:
            done.append(f"{self.weights_as_inputs} weights listed as graph inputs made constants")
        if self.opset[1] != self.opset[0]:
            done.append(f"opset {self.opset[0]} raised to {self.opset[1]}")
        if self.batchnorms:
            done.append(", ".join(f"{n} BatchNormalization {how}" for how, n in sorted(self.batchnorms.items())))
        done.append(f"constants and static shape computations folded ({self.nodes[0]} -> {self.nodes[1]} nodes)")
        text = "The ONNX graph was canonicalized first: " + "; ".join(done) + f" ({self.seconds:.2f} s)."
        return text + "".join(f" Not done: {s}." for s in self.skipped)


def canonicalize(model: onnx.ModelProto) -> Canonical:
    """The canonical form of a shape-pinned ONNX model (the input is not modified)."""
    start = time.perf_counter()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    before = default_opset(work)
    result = Canonical(work, (before, before), nodes=(len(work.graph.node), 0))
    result.weights_as_inputs = drop_initializer_inputs(work)
    if before < CANONICAL_OPSET and _only_default_domain(work):
        try:
            work = upgrade_opset(work, CANONICAL_OPSET)
        except Exception as exc:  # the converter lacks adapters for some old operators
            result.skipped.append(f"opset {before} kept, onnx's version converter failed ({_first_line(exc)})")
    work = _infer(work)
    result.batchnorms = rewrite_batchnorms(work)
    try:
        work = fold_constants(work)
    except Exception as exc:  # onnxruntime refused the model: the backends still get the rest
        result.skipped.append(f"constants not folded, onnxruntime failed ({_first_line(exc)})")
    work = _infer(work)
    result.model, result.opset = work, (before, default_opset(work))
    result.nodes = (result.nodes[0], len(work.graph.node))
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Unlist initializers from the graph inputs (old exporters list every weight there): Kiln feeds only the
    real inputs, and a listed weight is not a constant to onnxruntime's folding. In place; returns how many."""
    weights = {t.name for t in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in weights]
    for value in listed:
        model.graph.input.remove(value)
    return len(listed)


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain (0 if it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model converted to `opset` by onnx's version converter, with an IR version that opset needs."""
    from onnx import version_converter

    converted = version_converter.convert_version(model, opset)
    converted.ir_version = min(max(converted.ir_version, MIN_IR), MAX_IR)
    return converted


# ------------------------------------------------------------------------------------------- BatchNormalization

def rewrite_batchnorms(model: onnx.ModelProto) -> Counter:
    """Fold each inference BatchNormalization with constant statistics into the Conv/Gemm before it, or replace
    it by Mul + Add with constant scale and shift; in place. Returns how many went which way."""
    graph = model.graph
    consts = _constants(graph)
    ranks = _ranks(graph)
    consumers = Counter(_inputs(graph))
    outputs = {o.name for o in graph.output}
    producers = {out: node for node in graph.node for out in node.output}
    done: Counter = Counter()
    kept: list[onnx.NodeProto] = []
    for node in list(graph.node):
        affine = _bn_affine(node, consts)
        x = node.input[0] if affine is not None else ""
        prev = producers.get(x)
        sole = prev is not None and consumers[x] == 1 and x not in outputs
        if affine is None:
            kept.append(node)
        elif sole and prev.op_type == "Conv" and _fold_into_conv(prev, *affine, graph, consts):
            prev.output[0] = node.output[0]
            done["folded into Conv"] += 1
        elif sole and prev.op_type == "Gemm" and ranks.get(x) == 2 and _fold_into_gemm(prev, *affine, graph, consts):
            prev.output[0] = node.output[0]
            done["folded into Gemm"] += 1
        elif ranks.get(x, 0) >= 2:
            kept.extend(_as_mul_add(node, *affine, ranks[x], graph))
            done["rewritten as Mul+Add"] += 1
        else:
            kept.append(node)  # rank unknown: the channel axis cannot be broadcast safely
    del graph.node[:]
    graph.node.extend(kept)
    live = {o for n in graph.node for o in n.output}
    stale = [v for v in graph.value_info if v.name not in live]  # the outputs of Conv/Gemm that were renamed
    for v in stale:
        graph.value_info.remove(v)
    return done


def _bn_affine(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, c) with BN(x) = a * x + c per channel, for an inference BatchNormalization with constant inputs."""
    if node.op_type != "BatchNormalization" or node.domain not in DEFAULT_DOMAINS or len(node.input) != 5:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("training_mode", 0) or not attrs.get("spatial", 1) or len([o for o in node.output if o]) != 1:
        return None
    if not all(name in consts and consts[name].ndim == 1 for name in node.input[1:]):
        return None
    scale, bias, mean, var = (consts[name].astype(np.float64) for name in node.input[1:])
    a = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
    dtype = consts[node.input[1]].dtype
    return a.astype(dtype), (bias - mean * a).astype(dtype)


def _fold_into_conv(conv: onnx.NodeProto, a: np.ndarray, c: np.ndarray, graph: onnx.GraphProto,
                    consts: dict[str, np.ndarray]) -> bool:
    """W' = W * a (per output channel), B' = B * a + c."""
    if len(conv.input) < 2 or conv.input[1] not in consts:
        return False
    w = consts[conv.input[1]]
    if w.shape[0] != a.shape[0] or w.dtype != a.dtype:
        return False
    b = consts.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros_like(a)
    if b is None:
        return False
    new_w = w * a.reshape([-1] + [1] * (w.ndim - 1))
    _set_inputs(conv, [conv.input[0], _add_const(graph, conv.name + "_W_bn", new_w),
                              _add_const(graph, conv.name + "_B_bn", b * a + c)])
    return True


def _fold_into_gemm(gemm: onnx.NodeProto, a: np.ndarray, c: np.ndarray, graph: onnx.GraphProto,
                    consts: dict[str, np.ndarray]) -> bool:
    """Y = alpha A B + beta C, then a * Y + c per column: scale B's columns, C' = beta C a + c (beta becomes 1)."""
    if len(gemm.input) < 2 or gemm.input[1] not in consts:
        return False
    attrs = {x.name: onnx.helper.get_attribute_value(x) for x in gemm.attribute}
    w = consts[gemm.input[1]]
    w = w.T if attrs.get("transB", 0) else w  # (K, N)
    if w.ndim != 2 or w.shape[1] != a.shape[0] or w.dtype != a.dtype:
        return False
    bias = consts.get(gemm.input[2]) if len(gemm.input) > 2 and gemm.input[2] else np.zeros_like(a)
    if bias is None or bias.ndim > 1 and bias.shape[0] != 1:
        return False  # a C that varies by row is left alone
    new_w = w * a[None, :]
    new_c = np.broadcast_to(bias.reshape(-1), a.shape) * attrs.get("beta", 1.0) * a + c
    del gemm.attribute[:]
    gemm.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in attrs.items() if k not in ("transB", "beta"))
    _set_inputs(gemm, [gemm.input[0], _add_const(graph, gemm.name + "_B_bn", new_w.astype(w.dtype)),
                              _add_const(graph, gemm.name + "_C_bn", new_c.astype(w.dtype))])
    return True


def _as_mul_add(bn: onnx.NodeProto, a: np.ndarray, c: np.ndarray, rank: int,
                graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    shape = [-1] + [1] * (rank - 2)  # channels are axis 1; the batch axis broadcasts
    base = bn.name or bn.output[0]
    scaled = _unique(graph, base + "_scaled")
    return [
        onnx.helper.make_node("Mul", [bn.input[0], _add_const(graph, base + "_scale", a.reshape(shape))], [scaled],
                              name=base + "_mul"),
        onnx.helper.make_node("Add", [scaled, _add_const(graph, base + "_shift", c.reshape(shape))], [bn.output[0]],
                              name=base + "_add"),
    ]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers (not overridable inputs) and Constant nodes' values, by name."""
    inputs = {i.name for i in graph.input}
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in inputs}
    for node in graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in consts:  # torch's exports pass shared weights so
            consts[node.output[0]] = consts[node.input[0]]
    return consts


def _inputs(graph: onnx.GraphProto) -> list[str]:
    """Every tensor name the graph's nodes read, those read by subgraphs (If/Loop bodies) from outer scope too."""
    names = []
    for node in graph.node:
        names.extend(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                names.extend(_inputs(sub))
    return names


def _ranks(graph: onnx.GraphProto) -> dict[str, int]:
    return {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.input, *graph.value_info, *graph.output)
            if v.type.tensor_type.HasField("shape")}


def _add_const(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    name = _unique(graph, name)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def _set_inputs(node: onnx.NodeProto, inputs: list[str]) -> None:
    del node.input[:]
    node.input.extend(inputs)


def _unique(graph: onnx.GraphProto, name: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {
        i.name for i in graph.input}
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


# ------------------------------------------------------------------------------------------- constant folding

def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic (ONNX-only) graph optimizations, written back as ONNX: constant folding, with Shape of
    static tensors folded too, Conv+Mul/Add fusion, no-op elimination. The graph's name, inputs and outputs stay."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="kiln-canonical-") as tmp:
        source, folded = Path(tmp) / "source.onnx", Path(tmp) / "folded.onnx"
        large = sum(len(t.raw_data) for t in model.graph.initializer) > LARGE_BYTES  # ByteSize() serializes
        onnx.save(model, str(source), save_as_external_data=large)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if large:
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "folded.data")
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        out = onnx.load(str(folded))
    out.graph.name = model.graph.name
    added = {n.domain for n in out.graph.node} - {n.domain for n in model.graph.node} - set(DEFAULT_DOMAINS)
    if added:  # the basic level writes standard ONNX; anything else would be onnxruntime's own operators
        raise ValueError(f"onnxruntime wrote operators of the domain(s) {', '.join(sorted(added))}")
    used = {n.domain for n in out.graph.node} | set(DEFAULT_DOMAINS)
    kept = [o for o in out.opset_import if o.domain in used]  # onnxruntime declares its own domains, unused
    del out.opset_import[:]
    out.opset_import.extend(kept)
    out.ir_version = min(out.ir_version, MAX_IR)
    return out


# ------------------------------------------------------------------------------------------- what stays dynamic

# Inputs that decide an operator's output shape (by index, ONNX opset 13+ layouts), and operators whose output shape
# depends on the data itself. Where such an input is not a constant after folding, the shape is only known at run time.
SHAPE_INPUTS: dict[str, dict[int, str]] = {
    "Reshape": {1: "shape"}, "Expand": {1: "shape"}, "Tile": {1: "repeats"}, "ConstantOfShape": {0: "shape"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"}, "Range": {0: "start", 1: "limit", 2: "delta"},
    "Resize": {2: "scales", 3: "sizes"}, "Upsample": {1: "scales"}, "Pad": {1: "pads", 3: "axes"},
    "Squeeze": {1: "axes"}, "Unsqueeze": {1: "axes"}, "Split": {1: "split"}, "TopK": {1: "k"}, "OneHot": {1: "depth"},
    "ReduceSum": {1: "axes"}, "ReduceMean": {1: "axes"}, "ReduceMax": {1: "axes"}, "ReduceMin": {1: "axes"},
    "ReduceProd": {1: "axes"},
}
DATA_SHAPED = ("NonZero", "Unique", "NonMaxSuppression", "Compress", "Loop", "Scan", "If")


@dataclass
class RuntimeShape:
    """A node whose output shape is decided at run time, and by what."""

    op_type: str
    node: str
    by: str  # "its starts, ends" / "its input data"

    def describe(self) -> str:
        return (f"ONNX operator {self.op_type!r} (node {self.node!r}), whose output shape is set by {self.by} "
                "at run time")


def runtime_shaped_nodes(model: onnx.ModelProto) -> list[RuntimeShape]:
    """The nodes of a canonical model whose output shape still is not a constant (after all that can be folded)."""
    consts = {t.name for t in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    found = []
    for node in model.graph.node:
        name = node.name or (node.output[0] if node.output else "?")
        if node.op_type in DATA_SHAPED:
            found.append(RuntimeShape(node.op_type, name, "its input data"))
            continue
        dynamic = [what for i, what in SHAPE_INPUTS.get(node.op_type, {}).items()
                   if i < len(node.input) and node.input[i] and node.input[i] not in consts]
        if dynamic:
            found.append(RuntimeShape(node.op_type, name, "its " + ", ".join(dynamic)))
    return found


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes inferred for every tensor (data propagation folds shape arithmetic); the model as is on failure."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # e.g. over 2 GiB, or a custom operator: the backends infer what they need themselves
        return model


def _only_default_domain(model: onnx.ModelProto) -> bool:
    return all(o.domain in DEFAULT_DOMAINS for o in model.opset_import) and not model.functions


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]

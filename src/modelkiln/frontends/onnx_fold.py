"""Fold ONNX If nodes whose condition the pinned input shapes decide (rank and batch checks, e.g. Silero VAD).

Exporters keep both sides of a shape test such as `if x.dim() == 2` or `if x.shape[0] == 1`; with symbolic
shapes inference cannot tell them apart, but once DataInputConfig pins the shapes the dead side is ill-typed
(an LSTM fed a rank-2 tensor) and onnxruntime refuses the whole model. Folding keeps only the taken side.
An If whose condition depends on input values (e.g. a sample rate) stays, unless one of its branches cannot
run on inputs of the pinned shapes at all: then only the other is kept, and the user is told."""
from __future__ import annotations

from collections import ChainMap, Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper
from onnx.helper import make_node
from onnx.reference import ReferenceEvaluator

MAX_ROUNDS = 64  # each round folds the Ifs it can decide; inlined branches are looked at in the next one
MAX_ELEMENTS = 1 << 16  # conditions come from shapes: weights are never worth evaluating
STANDARD_DOMAINS = ("", "ai.onnx")
NOT_EVALUATED = {"If", "Loop", "Scan", "SequenceMap", "RandomNormal", "RandomUniform", "RandomNormalLike",
                 "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}

Values = ChainMap  # name -> np.ndarray; a subgraph sees its outer scopes' entries too
Types = ChainMap  # name -> onnx.TypeProto, from whole-model inference refined node by node


@dataclass
class _Fold:
    """State of one folding pass over a model."""

    opset: int
    defined: Counter  # how many places (graphs, nodes) define each value name, model-wide
    node_names: Counter  # how many nodes bear each name, model-wide: onnxruntime wants them unique
    drop_broken: bool  # also fold Ifs with one branch that cannot run on these shapes
    stale: set[str] = field(default_factory=set)  # outputs of folded Ifs: their value_info may be wrong
    notes: list[str] = field(default_factory=list)


def fold_static_ifs(model: onnx.ModelProto) -> list[str]:
    """Replace every If (also inside subgraphs) whose condition the static shapes decide by the branch it
    takes, then every If with one branch that cannot run on these shapes by its other one. Call it after
    the input shapes are pinned; returns notes for the user on what was folded."""
    if not any(n.op_type == "If" for g in _graphs(model.graph) for n in g.node):
        return []
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 1)
    decided, stale, notes, drop_broken = 0, set(), [], False
    for _ in range(MAX_ROUNDS):
        try:  # non-strict: the dead branches that pinning made ill-typed are exactly what we fold away
            inferred = onnx.shape_inference.infer_shapes(_probe(model), strict_mode=False)
        except Exception:  # e.g. a model past protobuf's 2 GiB: leave it as it is
            break
        names = Counter(n.name for g in _graphs(model.graph) for n in g.node if n.name)
        fold = _Fold(opset, _definitions(model.graph), names, drop_broken)
        folded, _ = _fold_graph(model.graph, inferred.graph, ChainMap(), ChainMap(), fold)
        stale |= fold.stale
        notes += fold.notes
        decided += folded - len(fold.notes)
        if not folded and drop_broken:
            break
        drop_broken = not folded  # a broken branch only counts once the shape tests inside it are folded
    if stale:
        _prune(model.graph, stale)
    if decided:
        notes.insert(0, f"{decided} If node(s) that the input shapes decide were folded to the branch taken.")
    return notes


def _probe(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose types come from the pinned inputs alone: value_info and output shapes that the exporter
    wrote for other shapes would otherwise steer the folding."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for graph in _graphs(probe.graph):
        del graph.value_info[:]
        for output in graph.output:
            if output.type.HasField("tensor_type"):
                output.type.tensor_type.ClearField("shape")
    return probe


def _fold_graph(graph: onnx.GraphProto, inferred: onnx.GraphProto, values: Values, types: Types,
                fold: _Fold) -> tuple[int, str | None]:
    """Fold the decidable Ifs of one graph and, recursively, of its subgraphs; `inferred` is the same graph
    after shape inference, node for node. Returns how many were folded and the first type error of a node
    of this graph whose input shapes are all known (a graph that can never run), if any."""
    values, types = values.new_child(), types.new_child()
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        types[info.name] = info.type
    for init in graph.initializer:
        types[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        if int(np.prod(init.dims)) <= MAX_ELEMENTS:
            values[init.name] = numpy_helper.to_array(init)
    nodes, folded, error = [], 0, None
    for node, seen in zip(graph.node, inferred.node):
        taken = _taken_branch(node, values)
        if taken is not None:
            nodes.extend(_inline(node, taken, fold))
            folded += 1
            continue
        errors = {}
        for attr, seen_attr in zip(node.attribute, seen.attribute):
            subs = [(attr.g, seen_attr.g)] if attr.type == AttributeProto.GRAPH else []
            subs += zip(attr.graphs, seen_attr.graphs) if attr.type == AttributeProto.GRAPHS else []
            for sub, seen_sub in subs:
                sub_folded, errors[attr.name] = _fold_graph(sub, seen_sub, values, types, fold)
                folded += sub_folded
        kept = _working_branch(node, errors, fold) if fold.drop_broken else None
        if kept is not None:
            nodes.extend(_inline(node, kept, fold))
            folded += 1
            continue
        error = error or _infer_node(node, values, types, fold.opset)
        _evaluate(node, values, types, fold.opset)
        nodes.append(node)
    if folded:
        del graph.node[:]  # the removed messages stay valid: `nodes` still refers to them
        graph.node.extend(nodes)
    return folded, error


def _taken_branch(node: onnx.NodeProto, values: Values) -> onnx.GraphProto | None:
    """The branch an If takes when its condition is known, else None."""
    if node.op_type != "If" or node.domain not in STANDARD_DOMAINS:
        return None
    cond = values.get(node.input[0])
    if cond is None or cond.size != 1:
        return None
    branches = {a.name: a.g for a in node.attribute}
    return branches["then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"]


def _working_branch(node: onnx.NodeProto, errors: dict[str, str | None],
                    fold: _Fold) -> onnx.GraphProto | None:
    """For an If with exactly one branch that cannot run on these shapes, the other branch (else None):
    the model as shipped fails on every input that would take the broken one, as onnxruntime refuses to
    load a model with an ill-typed branch at all. Records a note for the user."""
    if node.op_type != "If" or node.domain not in STANDARD_DOMAINS or len(errors) != 2:
        return None
    broken = [name for name, error in errors.items() if error]
    if len(broken) != 1:
        return None
    kept = "then_branch" if broken[0] == "else_branch" else "else_branch"
    fold.notes.append(f"If node {node.name or node.output[0]!r}: its {broken[0]} cannot run on inputs of "
                      f"these shapes ({errors[broken[0]]}), so only its {kept} was kept; the model as shipped "
                      "fails on inputs that would take the other.")
    return next(a.g for a in node.attribute if a.name == kept)


def _inline(node: onnx.NodeProto, branch: onnx.GraphProto, fold: _Fold) -> list[onnx.NodeProto]:
    """The branch's nodes, renamed where their names are defined elsewhere too, then Identity from the
    branch outputs to the If outputs. Branch initializers become Constant nodes."""
    local = [i.name for i in branch.initializer] + [o for n in branch.node for o in n.output if o]
    renames = {name: _fresh(fold.defined, name) for name in local if fold.defined[name] > 1}
    if renames:
        _rename(branch, renames)
    nodes = [make_node("Constant", [], [init.name], value=init) for init in branch.initializer]
    nodes += [make_node("Constant", [], [s.values.name], sparse_value=s) for s in branch.sparse_initializer]
    nodes += list(branch.node)
    for inner in nodes:
        if inner.name and fold.node_names[inner.name] > 1:
            inner.name = _fresh(fold.node_names, inner.name)
    for out, target in zip(branch.output, node.output):
        if target:
            nodes.append(make_node("Identity", [out.name], [target],
                                   name=_fresh(fold.node_names, f"{node.name or 'If'}_taken")))
    fold.stale.update(node.output)
    return nodes


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename values everywhere in `graph` and its subgraphs (outer-scope references included)."""
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = renames.get(sparse.values.name, sparse.values.name)
    for info in (*graph.input, *graph.output, *graph.value_info):
        info.name = renames.get(info.name, info.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        for sub in _subgraphs(node):
            _rename(sub, renames)


def _infer_node(node: onnx.NodeProto, values: Values, types: Types, opset: int) -> str | None:
    """Refine the output types of `node` with onnx's inference told the inputs' known values: whole-model
    inference misses those computed by ops it does not propagate (e.g. Pad's pads from Reshape/Transpose).
    Returns the inference error when every input shape is known: the node can never run."""
    if node.domain not in STANDARD_DOMAINS or _subgraphs(node) or not onnx.defs.has(node.op_type):
        return None
    if any(n not in types for n in node.input if n):
        return None
    if all(_static_shape(types.get(o)) is not None for o in node.output if o):
        return None  # whole-model inference typed it fully, so it type-checks
    data = {n: numpy_helper.from_array(values[n], n) for n in node.input if n in values}
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
        found = onnx.shape_inference.infer_node_outputs(
            schema, node, {n: types[n] for n in node.input if n}, data,
            opset_imports=[onnx.helper.make_opsetid("", opset)])
    except onnx.shape_inference.InferenceError as exc:  # ill-typed: in a dead branch, or one that never runs
        if all(_static_shape(types[n]) is not None for n in node.input if n):
            return f"{node.op_type} node {node.name or node.output[0]!r}: {_first_line(exc)}"
        return None
    except Exception:  # no schema for this opset, or the like: learn nothing, judge nothing
        return None
    for name, found_type in found.items():
        if name not in types or _static_shape(found_type) is not None:
            types[name] = found_type
    return None


def _evaluate(node: onnx.NodeProto, values: Values, types: Types, opset: int) -> None:
    """Record the value of each output of `node` that its known inputs (or static shapes) determine."""
    if node.domain not in STANDARD_DOMAINS or node.op_type in NOT_EVALUATED or not node.output:
        return
    if node.op_type in ("Shape", "Size"):
        source = node.input[0]
        shape = values[source].shape if source in values else _static_shape(types.get(source))
        if shape is not None:
            values[node.output[0]] = _shape_value(node, tuple(shape))
        return
    if node.op_type == "Constant":  # most nodes of exported graphs: read them without an evaluator
        value = _constant_value(node)
        if value is not None:
            values[node.output[0]] = value
        return
    feeds = {n: values.get(n) for n in node.input if n}
    if any(v is None or v.size > MAX_ELEMENTS for v in feeds.values()):
        return
    results = _run_node(node, feeds, opset)
    for name, result in zip(node.output, results or ()):
        if name and isinstance(result, np.ndarray) and result.size <= MAX_ELEMENTS:
            values[name] = result


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """What Shape (with its start/end attributes) or Size returns for a tensor of this shape."""
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[start:end], dtype=np.int64)  # Python slicing clamps as ONNX does


def _run_node(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list | None:
    """Run one node with onnx's reference evaluator; None when it cannot."""
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for n, v in feeds.items()]
    outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        return ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # an op the reference lacks, or inputs it rejects: the value stays unknown
        return None


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """A Constant node's value, unless it is big (weights), sparse or strings: never part of a condition."""
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None:
        return None
    if attr.type == AttributeProto.TENSOR and int(np.prod(attr.t.dims)) <= MAX_ELEMENTS:
        return numpy_helper.to_array(attr.t)
    scalars = {"value_int": (attr.i, np.int64), "value_ints": (list(attr.ints), np.int64),
               "value_float": (attr.f, np.float32), "value_floats": (list(attr.floats), np.float32)}
    if attr.name in scalars and len(attr.ints) + len(attr.floats) <= MAX_ELEMENTS:
        data, dtype = scalars[attr.name]
        return np.array(data, dtype=dtype)
    return None


def _static_shape(value_type: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """A tensor type's shape when every dim is a size, else None."""
    if value_type is None or value_type.WhichOneof("value") != "tensor_type":
        return None
    if not value_type.tensor_type.HasField("shape"):
        return None
    dims = value_type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _prune(graph: onnx.GraphProto, stale: set[str]) -> None:
    """Drop nodes nothing uses any more (the shape tests of folded Ifs) and value_info that folding made
    stale or left naming nothing, in `graph` and its subgraphs."""
    live = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if node.domain in STANDARD_DOMAINS and not any(o in live for o in node.output if o):
            continue
        kept.append(node)
        live.update(node.input)
        live.update(_outer_references(node))
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(kept))
    for node in graph.node:
        for sub in _subgraphs(node):
            _prune(sub, stale)
    defined = {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in defined and v.name not in stale]
    if len(infos) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(infos)


def _outer_references(node: onnx.NodeProto) -> set[str]:
    """Every name that the node's subgraphs use (a superset of their outer-scope references)."""
    names: set[str] = set()
    for sub in _subgraphs(node):
        names.update(o.name for o in sub.output)
        for inner in sub.node:
            names.update(inner.input)
            names |= _outer_references(inner)
    return names


def _definitions(graph: onnx.GraphProto) -> Counter:
    """How many times each name is defined (input, initializer, node output) across graph and subgraphs."""
    counts: Counter = Counter()
    for g in _graphs(graph):
        counts.update(i.name for i in g.input)
        counts.update(i.name for i in g.initializer)
        counts.update(s.values.name for s in g.sparse_initializer)
        counts.update(o for n in g.node for o in n.output if o)
    return counts


def _graphs(graph: onnx.GraphProto):
    """`graph` and all its subgraphs, depth first."""
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _graphs(sub)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop and Scan bodies)."""
    subs = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            subs.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            subs.extend(attr.graphs)
    return subs


def _fresh(taken: Counter, name: str) -> str:
    """A name not in `taken`, derived from `name`; it is then taken."""
    n = 1
    while f"{name}__kiln{n}" in taken:
        n += 1
    taken[f"{name}__kiln{n}"] += 1
    return f"{name}__kiln{n}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else exc.__class__.__name__

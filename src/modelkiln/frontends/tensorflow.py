"""TensorFlow frontend: a SavedModel directory (a signature of it) or a frozen GraphDef .pb, converted
with tf2onnx. Shapes are NHWC, as TensorFlow users write them. Reference: TensorFlow running the model."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one, find_model_files
from modelkiln.frontends.input_config import FIELD, parse_data_input_config
from modelkiln.frontends.onnx import output_specs
from modelkiln.frontends.tf_common import (
    OPSET, ModelInput, conversion_failed, convert_function, convert_graph_def, finish_onnx, first_line,
    import_tensorflow, numpy_dtype, static_inputs, stderr_silenced, strip_port,
)

OPTIONS = "OutputConfig.CompilerOptions"
DEFAULT_SIGNATURE = "serving_default"
# Node types that end a graph without being one of its outputs (side effects, checkpoints, inputs).
NOT_OUTPUTS = frozenset({"Const", "NoOp", "Placeholder", "Assert", "Print", "PrintV2", "SaveV2", "Save", "SaveSlices",
                         "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints", "ShardedFilename",
                         "Assign", "AssignVariableOp", "VarHandleOp", "VariableV2", "Variable"})
SAVE_HINT = "save the model with tf.saved_model.save(model, 'export_dir') and archive that folder."


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Load the archive's SavedModel (or frozen .pb), fix its input shapes and convert it to ONNX.

    Input dtypes come from the graph, so CompilerOptions DTYPE is not needed here."""
    options = frontend_options or {}
    wanted = parse_data_input_config(data_input_config)
    saved_model = _saved_model_dir(model_dir)
    if saved_model is not None:
        return _load_saved_model(saved_model, wanted, str(options.get("signature_def_key") or DEFAULT_SIGNATURE))
    path = exactly_one(model_dir, (".pb",), "TensorFlow")
    names = options.get("output_names")
    return _load_frozen_graph(path, wanted, None if names is None else _output_names(names))


def _saved_model_dir(model_dir: Path) -> Path | None:
    """The SavedModel folder, None when the archive holds none; Neo's rule is one model per archive."""
    found = find_model_files(model_dir, ("saved_model.pb", "saved_model.pbtxt"))
    if not found:
        return None
    folders = {p.parent for p in found}
    strays = [p for p in find_model_files(model_dir, (".pb",)) if not any(f in p.parents for f in folders)]
    if len(folders) > 1 or strays:
        names = ", ".join(p.relative_to(model_dir).as_posix() for p in sorted({*found, *strays}))
        raise CompilationError(
            "fetch", f"exactly one SavedModel directory or one frozen .pb is allowed for TensorFlow models; "
            f"the archive holds: {names}.", "archive one model only.",
        )
    return folders.pop()


def _load_saved_model(folder: Path, wanted: list[TensorSpec] | None, key: str) -> ConvertedModel:
    tf = import_tensorflow()
    version = _saved_model_version(folder)
    try:
        with stderr_silenced():
            loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        raise CompilationError("convert", f"TensorFlow cannot load the SavedModel: {first_line(exc)}",
                               SAVE_HINT) from None
    if key not in loaded.signatures:
        keys = sorted(loaded.signatures.keys())
        if not keys:
            raise CompilationError("convert", "the SavedModel has no signatures to compile.",
                                   "save it with signatures: tf.saved_model.save(model, dir, signatures=fn).")
        raise ValidationError(f"{OPTIONS}.signature_def_key",
                              f"the SavedModel has no signature {key!r}; its signatures are {keys}.")
    signature = loaded.signatures[key]
    arg_specs = signature.structured_input_signature[1]
    names = list(arg_specs)
    declared = [ModelInput(n, _dims(s.shape), numpy_dtype(s.dtype)) for n, s in arg_specs.items()]
    # Users may also know an input by its placeholder's name, e.g. "serving_default_image:0".
    aliases = {strip_port(s.name): n for n, s in arg_specs.items() if s.name}
    inputs = static_inputs(declared, _renamed(wanted, aliases), "TensorFlow")
    output_keys = sorted(signature.structured_outputs)  # tf.nest order: what tf2onnx's outputs follow

    def reference(feeds: Feeds) -> list[np.ndarray]:
        out = signature(**{i.name: tf.constant(feeds[i.name]) for i in inputs})
        return [out[k].numpy() for k in output_keys]

    outputs = output_specs(reference, inputs, output_keys)
    tf_specs = [tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in inputs]

    def by_position(*args):
        out = signature(**dict(zip(names, args)))
        return {k: out[k] for k in output_keys}

    model = _from_function(tf.function(by_position, input_signature=tf_specs), tf_specs, inputs, outputs)
    return ConvertedModel(
        onnx_model=model, inputs=inputs, outputs=outputs, reference=reference, framework="TENSORFLOW",
        framework_version=version, converters=_converters(tf),
        notes=[f"SavedModel signature {key!r} converted to ONNX opset {OPSET} with tf2onnx; inputs are "
               "in the signature's layout (NHWC for TensorFlow image models); outputs are the signature's "
               f"keys in sorted order: {', '.join(output_keys)}."],
    )


def _saved_model_version(folder: Path) -> str | None:
    """tensorflow_version from saved_model.pb's meta_info_def, when the writer recorded it."""
    path = folder / "saved_model.pb"
    if not path.is_file():
        return None
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:
        raise CompilationError("convert", f"saved_model.pb is not a readable SavedModel ({first_line(exc)}).",
                               SAVE_HINT) from None
    versions = {m.meta_info_def.tensorflow_version for m in proto.meta_graphs} - {""}
    return versions.pop() if len(versions) == 1 else None


def _load_frozen_graph(path: Path, wanted: list[TensorSpec] | None, output_names: list[str] | None
                       ) -> ConvertedModel:
    tf = import_tensorflow()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:
        raise CompilationError("convert", f"{path.name} is not a readable frozen TensorFlow graph "
                               f"(GraphDef) ({first_line(exc)}).", SAVE_HINT) from None
    nodes = {n.name: n for n in graph_def.node}
    if not nodes:
        raise CompilationError("convert", f"{path.name} holds an empty graph.", SAVE_HINT)
    declared = [ModelInput(n.name, _placeholder_dims(n), numpy_dtype(tf.as_dtype(n.attr["dtype"].type)))
                for n in graph_def.node if n.op == "Placeholder"]
    if wanted is None:
        raise ValidationError(FIELD, "a frozen graph needs DataInputConfig naming its input tensors, e.g. "
                              + ", ".join(f'{{"{i.name}:0": {i.example()}}}' for i in declared[:3]))
    inputs = static_inputs(declared, wanted, "TensorFlow")
    notes = []
    if output_names is None:  # as Neo: the graph's final nodes are its outputs
        outputs_wanted = _sink_outputs(graph_def, path.name)
        notes.append("no output_names in CompilerOptions: the outputs are the graph's final nodes (those no other "
                     f"node consumes): {', '.join(outputs_wanted)}.")
    else:
        outputs_wanted = _checked_outputs(output_names, nodes, graph_def)
    tensor_names = [f"{i.name}:0" for i in inputs]

    def imported(*args):
        return tf.graph_util.import_graph_def(graph_def, input_map=dict(zip(tensor_names, args)),
                                              return_elements=outputs_wanted, name="")

    try:
        with stderr_silenced():
            pruned = tf.compat.v1.wrap_function(imported, [tf.TensorSpec(i.shape, i.dtype) for i in inputs])
    except Exception as exc:
        raise CompilationError("convert", f"TensorFlow cannot import {path.name} with these inputs: "
                               f"{first_line(exc)}", f"check {FIELD} and output_names.") from None

    def reference(feeds: Feeds) -> list[np.ndarray]:
        return [t.numpy() for t in pruned(*[tf.constant(feeds[i.name]) for i in inputs])]

    outputs = output_specs(reference, inputs, [strip_port(n) for n in outputs_wanted])
    try:
        with stderr_silenced():
            model = convert_graph_def(graph_def, tensor_names, outputs_wanted,
                                      shape_override={n: list(i.shape) for n, i in zip(tensor_names, inputs)})
    except Exception as exc:
        raise conversion_failed("tf2onnx", exc, "check the graph is frozen (variables folded to constants).") from None
    return ConvertedModel(
        onnx_model=finish_onnx(model, inputs, outputs, "tf2onnx"), inputs=inputs, outputs=outputs,
        reference=reference, framework="TENSORFLOW",
        framework_version=None,  # a bare GraphDef does not record the TensorFlow version that wrote it
        converters=_converters(tf),
        notes=[f"frozen graph converted to ONNX opset {OPSET} with tf2onnx; inputs and outputs are named "
               "after their graph nodes without the ':0' suffix, in the layout the graph takes (NHWC "
               "for TensorFlow image models).", *notes],
    )


def _output_names(value: Any) -> list[str]:
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names) or not names:
        raise ValidationError(f"{OPTIONS}.output_names", f"must be a list of tensor names, got {value!r}")
    return [n.strip() for n in names]


def _checked_outputs(names: list[str], nodes: dict, graph_def) -> list[str]:
    """Output tensor names with their ":0"; unknown ones refused with the graph's likely outputs."""
    unknown = [n for n in names if strip_port(n) not in nodes]
    if unknown:
        ends = [n.name for n in _sink_nodes(graph_def)]
        raise ValidationError(f"{OPTIONS}.output_names",
                              f"{unknown} are not nodes of the graph; its final nodes are {ends[:10]}.")
    return [n if n != strip_port(n) else f"{n}:0" for n in names]


def _sink_nodes(graph_def) -> list:
    """Nodes no other node consumes (by data or control edge) that are computed from the graph's inputs:
    constants, bookkeeping (NoOp, Assert, Save/Restore, Print) and leftovers that read no input are no outputs."""
    consumers: dict[str, list[str]] = {}
    for node in graph_def.node:
        for name in node.input:
            consumers.setdefault(strip_port(name.lstrip("^")), []).append(node.name)
    reached: set[str] = set()  # forward from the placeholders; a walk, since loops make cycles
    frontier = [n.name for n in graph_def.node if n.op == "Placeholder"]
    while frontier:
        name = frontier.pop()
        if name not in reached:
            reached.add(name)
            frontier.extend(consumers.get(name, []))
    return [n for n in graph_def.node if n.name not in consumers and n.name in reached
            and n.op not in NOT_OUTPUTS and "AssertGuard" not in n.name.split("/")]  # TF2's Assert: If + Identity


def _sink_outputs(graph_def, file_name: str) -> list[str]:
    """The tensors of the graph's sink nodes (every output port of each), as output_names would give them."""
    tf = import_tensorflow()
    sinks = _sink_nodes(graph_def)
    if not sinks:
        raise CompilationError("convert", f"{file_name} has no node that computes a value from its inputs "
                               "and that no other node consumes, so its outputs cannot be told.",
                               'give the output tensors in CompilerOptions, e.g. {"output_names": ["Identity:0"]}.')
    graph = tf.Graph()
    try:
        with graph.as_default(), stderr_silenced():
            tf.graph_util.import_graph_def(graph_def, name="")
    except Exception as exc:
        raise CompilationError("convert", f"TensorFlow cannot import {file_name}: {first_line(exc)}",
                               SAVE_HINT) from None
    return [t.name for n in sinks for t in graph.get_operation_by_name(n.name).outputs if t.dtype != tf.resource]


def _from_function(function, tf_specs: list, inputs: list[TensorSpec], outputs: list[TensorSpec]):
    try:
        with stderr_silenced():
            model = convert_function(function, tf_specs)
    except Exception as exc:
        raise conversion_failed("tf2onnx", exc, "replace the failing operation, or export a frozen graph.") from None
    return finish_onnx(model, inputs, outputs, "tf2onnx")


def _renamed(wanted: list[TensorSpec] | None, aliases: dict[str, str]) -> list[TensorSpec] | None:
    if wanted is None:
        return None
    return [TensorSpec(aliases.get(strip_port(w.name), w.name), w.shape, w.dtype) for w in wanted]


def _dims(shape) -> tuple[int | None, ...] | None:
    return None if shape.rank is None else tuple(shape.as_list())


def _placeholder_dims(node) -> tuple[int | None, ...] | None:
    shape = node.attr["shape"].shape
    if "shape" not in node.attr or shape.unknown_rank:
        return None
    return tuple(d.size if d.size >= 0 else None for d in shape.dim)


def _converters(tf) -> dict[str, str]:
    import onnx
    import tf2onnx
    return {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__}

"""TensorFlow frontend: a SavedModel directory (a signature of it) or a frozen GraphDef .pb, converted
with tf2onnx. Shapes are NHWC, as TensorFlow users write them. Reference: TensorFlow running the model."""
from __future__ import annotations

from collections.abc import Callable, Mapping
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
    except Exception as exc:  # e.g. a Keras 2 optimizer's slots, which TF2's object loader no longer revives
        return _load_saved_model_v1(folder, wanted, key, version, first_line(exc))
    _check_signature(key, list(loaded.signatures.keys()))
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
        notes=[_signature_note(key, output_keys)],
    )


def _check_signature(key: str, keys: list[str]) -> None:
    """Refuse a signature_def_key the SavedModel lacks, listing the ones it has."""
    if key in keys:
        return
    if not keys:
        raise CompilationError("convert", "the SavedModel has no signatures to compile.",
                               "save it with signatures: tf.saved_model.save(model, dir, signatures=fn).")
    raise ValidationError(f"{OPTIONS}.signature_def_key",
                          f"the SavedModel has no signature {key!r}; its signatures are {sorted(keys)}.")


def _signature_note(key: str, output_keys: list[str]) -> str:
    return (f"SavedModel signature {key!r} converted to ONNX opset {OPSET} with tf2onnx; inputs are in the "
            "signature's layout (NHWC for TensorFlow image models); outputs are the signature's keys in sorted "
            f"order: {', '.join(output_keys)}.")


def _load_saved_model_v1(folder: Path, wanted: list[TensorSpec] | None, key: str, version: str | None,
                         tf2_error: str) -> ConvertedModel:
    """The SavedModel's "serve" MetaGraph through TF1's loader, its variables frozen to constants, then
    converted as a frozen graph: for SavedModels whose objects TF2's loader cannot revive."""
    tf = import_tensorflow()
    graph = tf.Graph()
    try:
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session, stderr_silenced():
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(folder))
            signatures = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}  # init ops
            _check_signature(key, list(signatures))
            signature = signatures[key]
            output_keys = sorted(signature.outputs)
            output_tensors = [signature.outputs[k].name for k in output_keys]
            graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), [strip_port(t) for t in output_tensors])
    except (ValidationError, CompilationError):
        raise
    except Exception as exc:
        raise CompilationError("convert", f"TensorFlow cannot load the SavedModel: {tf2_error}; nor can TF1's "
                               f"loader: {first_line(exc)}", SAVE_HINT) from None
    input_keys = sorted(signature.inputs)
    input_tensors = [signature.inputs[k].name for k in input_keys]
    try:
        graph_def = _inline_functions(graph_def, input_tensors + output_tensors)
    except Exception as exc:
        raise conversion_failed("grappler (function inlining)", exc, SAVE_HINT) from None
    declared = [ModelInput(k, _proto_dims(signature.inputs[k].tensor_shape),
                           numpy_dtype(tf.as_dtype(signature.inputs[k].dtype))) for k in input_keys]
    aliases = {strip_port(signature.inputs[k].name): k for k in input_keys}  # e.g. "serving_default_x:0"
    inputs = static_inputs(declared, _renamed(wanted, aliases), "TensorFlow")
    model, outputs, reference = _convert_frozen(graph_def, inputs, input_tensors, output_tensors, output_keys,
                                                "the SavedModel")
    return ConvertedModel(
        onnx_model=model, inputs=inputs, outputs=outputs, reference=reference, framework="TENSORFLOW",
        framework_version=version, converters=_converters(tf),
        notes=[f"the SavedModel was loaded with TF1's loader (tf.compat.v1.saved_model.loader.load, tags "
               f"['serve']) and its variables frozen into constants, because TF2's tf.saved_model.load failed: "
               f"{tf2_error}", _signature_note(key, output_keys)],
    )


def _inline_functions(graph_def, fetches: list[str]):
    """Grappler's aggressive function inlining (control flow kept functional): TF2 graphs call their body
    through StatefulPartitionedCall, which tf2onnx does not convert. The call node keeps its name."""
    tf = import_tensorflow()
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.framework.convert_to_constants import disable_lower_using_switch_merge
    from tensorflow.python.grappler import tf_optimizer
    graph_def = disable_lower_using_switch_merge(graph_def)
    for function in graph_def.library.function:  # a GPU variant (e.g. CuDNN LSTM) would block inlining
        function.attr.pop("api_implements", None)
    with tf.Graph().as_default():  # exporting a MetaGraph needs graph mode
        meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def)
    meta_graph.collection_def["train_op"].node_list.value.extend(fetches)  # grappler keeps what is fetched
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers[:] = ["function"]
    rewrite.function_optimization = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    rewrite.min_graph_nodes = -1
    with stderr_silenced():
        return tf_optimizer.OptimizeGraph(config, meta_graph)


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
    model, outputs, reference = _convert_frozen(graph_def, inputs, tensor_names, outputs_wanted,
                                                [strip_port(n) for n in outputs_wanted], path.name)
    return ConvertedModel(
        onnx_model=model, inputs=inputs, outputs=outputs,
        reference=reference, framework="TENSORFLOW",
        framework_version=None,  # a bare GraphDef does not record the TensorFlow version that wrote it
        converters=_converters(tf),
        notes=[f"frozen graph converted to ONNX opset {OPSET} with tf2onnx; inputs and outputs are named "
               "after their graph nodes without the ':0' suffix, in the layout the graph takes (NHWC "
               "for TensorFlow image models).", *notes],
    )


def _convert_frozen(graph_def, inputs: list[TensorSpec], tensor_names: list[str], output_tensors: list[str],
                    output_names: list[str], what: str) -> tuple[Any, list[TensorSpec], Callable[[Feeds], list]]:
    """A frozen GraphDef fed at tensor_names (one per input): its ONNX model, output specs and reference."""
    tf = import_tensorflow()

    def imported(*args):
        return tf.graph_util.import_graph_def(graph_def, input_map=dict(zip(tensor_names, args)),
                                              return_elements=output_tensors, name="")

    try:
        with stderr_silenced():
            pruned = tf.compat.v1.wrap_function(imported, [tf.TensorSpec(i.shape, i.dtype) for i in inputs])
    except Exception as exc:
        raise CompilationError("convert", f"TensorFlow cannot import {what} with these inputs: "
                               f"{first_line(exc)}", f"check {FIELD} and output_names.") from None

    def reference(feeds: Feeds) -> list[np.ndarray]:
        return [t.numpy() for t in pruned(*[tf.constant(feeds[i.name]) for i in inputs])]

    outputs = output_specs(reference, inputs, output_names)
    try:
        with stderr_silenced():
            model = convert_graph_def(graph_def, tensor_names, output_tensors,
                                      shape_override={n: list(i.shape) for n, i in zip(tensor_names, inputs)})
    except Exception as exc:
        raise conversion_failed("tf2onnx", exc, "check the graph is frozen (variables folded to constants).") from None
    return finish_onnx(model, inputs, outputs, "tf2onnx"), outputs, reference


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


def _proto_dims(shape) -> tuple[int | None, ...] | None:
    """A TensorShapeProto (as in a SignatureDef) as dims; None when even the rank is unknown."""
    return None if shape.unknown_rank else tuple(d.size if d.size >= 0 else None for d in shape.dim)


def _placeholder_dims(node) -> tuple[int | None, ...] | None:
    shape = node.attr["shape"].shape
    if "shape" not in node.attr or shape.unknown_rank:
        return None
    return tuple(d.size if d.size >= 0 else None for d in shape.dim)


def _converters(tf) -> dict[str, str]:
    import onnx
    import tf2onnx
    return {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__}

"""PyTorch frontend: one TorchScript .pth/.pt, or one torch.export .pt2, exported to ONNX.
Reference: the TorchScript module (or the ExportedProgram's module) run by torch."""
from __future__ import annotations

import copy
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one
from modelkiln.frontends.input_config import FIELD, parse_data_input_config
from modelkiln.frontends.onnx import check_operators, output_specs
from modelkiln.frontends.pytorch_args import FORWARD_ARGS, bind, call_args, describe, forward_params
from modelkiln.frontends.pytorch_export import TRACE_HINT, example_inputs, export_program, to_onnx
from modelkiln.frontends.pytorch_state import prepared, written_attributes

SUFFIXES = (".pth", ".pt", ".jit", ".pt2")  # TorchScript (.jit as Silero and others ship it), torch.export


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Load the TorchScript file, trace it on the declared shapes and export it to ONNX."""
    path = exactly_one(model_dir, SUFFIXES, "PyTorch")
    inputs = parse_data_input_config(data_input_config, allow_list=True, default_dtype=input_dtype or "float32")
    if path.suffix == ".pt2":
        return _load_exported_program(path, inputs)
    if inputs is None:
        raise CompilationError(
            "convert", "PyTorch models need DataInputConfig: TorchScript files do not record input shapes.",
            f"set {FIELD}, e.g. [[1,3,224,224]] or {{\"input0\": [1,3,224,224]}}.",
        )
    module = _load_torchscript(path)
    params = forward_params(module)
    slots = bind(params, len(inputs), (frontend_options or {}).get(FORWARD_ARGS))
    state = written_attributes(module)
    notes = []

    def reference(feeds: Feeds) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[i.name])) for i in inputs]
        fresh = copy.deepcopy(module) if state else module  # each check is one call from the state at load
        try:
            with torch.no_grad():
                out = fresh(*(tensors if slots is None else call_args(slots, tensors)))
        except torch.jit.Error as exc:  # its first line is "The following operation failed ..."; the cause is last
            raise RuntimeError(str(exc).strip().splitlines()[-1]) from None
        return [t.numpy() for t in _flatten(out)]

    outputs = output_specs(_on_example_inputs(reference, inputs), inputs)
    exportable = module
    if slots is not None or state:
        exportable, folded = prepared(module, slots or list(range(len(inputs))), example_inputs(inputs))
        if slots is not None and params is not None and describe(params, slots):
            notes.append(f"forward() compiled for {describe(params, slots)} ({FORWARD_ARGS} and defaults).")
        if state:
            notes.append(f"forward() writes module state ({', '.join(state)}): compiled as one call from the state "
                         "the file holds; the compiled model keeps no state between calls"
                         + ("." if folded else " (the state's flow depends on the inputs; exported as written)."))
    exported = to_onnx(exportable, inputs, outputs)
    check_operators(exported.model)
    return ConvertedModel(
        onnx_model=exported.model, inputs=inputs, outputs=outputs, reference=reference, framework="PYTORCH",
        framework_version=None,  # TorchScript archives do not record the torch version that wrote them
        converters={"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__},
        notes=[exported.note, *notes],
    )


def _load_exported_program(path: Path, declared: list[TensorSpec] | None) -> ConvertedModel:
    """A torch.export archive: it records its input shapes, so DataInputConfig is optional and must agree."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise CompilationError("convert", f"{path.name} is not a torch.export archive "
                                          f"({str(exc).splitlines()[0][:200]}).",
                               "save it with torch.export.save(torch.export.export(model.eval(), (x,)), "
                               "'model.pt2')") from None
    recorded = _exported_inputs(program)
    inputs = recorded
    if declared is not None:
        if [i.shape for i in declared] != [i.shape for i in recorded]:
            raise CompilationError(
                "convert", f"{FIELD} declares shapes {[list(i.shape) for i in declared]} but {path.name} was "
                           f"exported for {[list(i.shape) for i in recorded]}.",
                "give the exported shapes (or leave DataInputConfig out), or export the program again.")
        inputs = [TensorSpec(d.name, r.shape, r.dtype) for d, r in zip(declared, recorded)]
    module = program.module()

    def reference(feeds: Feeds) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[i.name])) for i in inputs])
        return [t.numpy() for t in _flatten(out)]

    outputs = output_specs(reference, inputs)
    example = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype)) for i in inputs)
    try:
        model = export_program(program, example, {"input_names": [i.name for i in inputs],
                                                  "output_names": [o.name for o in outputs]})
    except Exception as exc:
        raise CompilationError("convert", f"exporting {path.name} to ONNX failed: {str(exc).splitlines()[0][:400]}",
                               "check that torch.onnx supports every operator of the program.") from None
    check_operators(model)
    return ConvertedModel(
        onnx_model=model, inputs=inputs, outputs=outputs, reference=reference, framework="PYTORCH",
        framework_version=None,  # .pt2 archives do not say which torch wrote them either
        converters={"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__},
        notes=["torch.export program exported to ONNX with torch.onnx (dynamo exporter); its input shapes "
               "are the ones it was exported with."],
    )


def _exported_inputs(program: Any) -> list[TensorSpec]:
    user = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            value = node.meta.get("val")
            if value is None or not all(isinstance(d, int) for d in value.shape):
                raise CompilationError("convert", f"input {node.name} of the exported program has a dynamic shape.",
                                       "export with static shapes (no dynamic_shapes=...), as Neo compiles static "
                                       "shapes.")
            specs.append(TensorSpec(f"input{len(specs)}", tuple(value.shape), str(value.dtype).removeprefix("torch.")))
    return specs


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        kind = "not a TorchScript archive"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if not any("/code/" in n for n in z.namelist()):
                    kind = "a torch.save() pickle (weights or a Python module), not TorchScript"
        raise CompilationError("convert", f"{path.name} is {kind} ({str(exc).splitlines()[0][:200]}).",
                               TRACE_HINT) from None
    return module.eval()


def _on_example_inputs(reference, inputs: list[TensorSpec]):
    """The reference, run on example_inputs whatever it is given: output_specs probes it with zeros."""
    example = {i.name: t.numpy() for i, t in zip(inputs, example_inputs(inputs))}
    return lambda feeds: reference(example)


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    raise CompilationError(
        "convert", f"the model returns a {type(out).__name__}; only tensors (or tuples/lists/dicts of them) compile.",
        "return tensors from forward().",
    )

"""PyTorch frontend: one TorchScript .pth/.pt, or one torch.export .pt2, exported to ONNX.
Reference: the TorchScript module (or the ExportedProgram's module) run by torch."""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one
from modelkiln.frontends.input_config import FIELD, parse_data_input_config
from modelkiln.frontends.onnx import check_operators, output_specs

OPSET = 17
TRACE_HINT = "save the model as TorchScript: torch.jit.trace(model.eval(), example_input).save('model.pth')"


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Load the TorchScript file, trace it on the declared shapes and export it to ONNX."""
    path = exactly_one(model_dir, (".pth", ".pt", ".pt2"), "PyTorch")
    inputs = parse_data_input_config(data_input_config, allow_list=True, default_dtype=input_dtype or "float32")
    if path.suffix == ".pt2":
        return _load_exported_program(path, inputs)
    if inputs is None:
        raise CompilationError(
            "convert", "PyTorch models need DataInputConfig: TorchScript files do not record input shapes.",
            f"set {FIELD}, e.g. [[1,3,224,224]] or {{\"input0\": [1,3,224,224]}}.",
        )
    module = _load_torchscript(path)

    def reference(feeds: Feeds) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[i.name])) for i in inputs])
        return [t.numpy() for t in _flatten(out)]

    outputs = output_specs(reference, inputs)
    model = _export(module, inputs, outputs)
    check_operators(model)
    return ConvertedModel(
        onnx_model=model, inputs=inputs, outputs=outputs, reference=reference, framework="PYTORCH",
        framework_version=None,  # TorchScript archives do not record the torch version that wrote them
        converters={"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__},
        notes=[f"TorchScript exported to ONNX opset {OPSET} with torch.onnx (TorchScript exporter)."],
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
        with warnings.catch_warnings(), _native_output_silenced(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            exported = torch.onnx.export(program, example, dynamo=True, verbose=False,
                                         input_names=[i.name for i in inputs],
                                         output_names=[o.name for o in outputs])
    except Exception as exc:
        raise CompilationError("convert", f"exporting {path.name} to ONNX failed: {str(exc).splitlines()[0][:400]}",
                               "check that torch.onnx supports every operator of the program.") from None
    model = exported.model_proto
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.31 loads
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


def _export(module, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> onnx.ModelProto:
    example = tuple(torch.zeros(i.shape, dtype=getattr(torch, i.dtype)) for i in inputs)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), _native_output_silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, example, buffer, input_names=[i.name for i in inputs],
                output_names=[o.name for o in outputs], opset_version=OPSET, dynamo=False,
            )
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        raise CompilationError(
            "convert", f"torch.onnx cannot convert an operator: {str(exc).splitlines()[0]}",
            "rewrite that part of the model with supported operations, or register a custom ONNX symbolic.",
        ) from None
    except Exception as exc:
        raise CompilationError(
            "convert", f"exporting the TorchScript module to ONNX failed: {str(exc).splitlines()[0][:400]}",
            TRACE_HINT + " (scripted control flow that depends on data cannot be compiled).",
        ) from None
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """torch's C++ exporter dumps its whole IR graph to stdout on failure; our error says what matters."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


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

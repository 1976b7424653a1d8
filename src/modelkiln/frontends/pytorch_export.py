"""TorchScript to ONNX: torch.onnx's TorchScript exporter first (with Kiln's symbolics for the fused transformer
kernels), then, where it fails, torch's TorchScript-to-torch.export converter and torch.onnx's dynamo exporter,
which knows operators the first does not (FFT, STFT, antialiased resize, ...)."""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx
import torch

from modelkiln.errors import CompilationError
from modelkiln.frontends import pytorch_attention
from modelkiln.frontends.base import TensorSpec, fd_silenced

OPSET = 17
MAX_IR_VERSION = 10  # what onnxruntime 1.31 loads
TRACE_HINT = "save the model as TorchScript: torch.jit.trace(model.eval(), example_input).save('model.pth')"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Exported:
    """An ONNX model and how it was made, for the report's notes."""

    model: onnx.ModelProto
    note: str


def example_inputs(inputs: list[TensorSpec]) -> tuple[torch.Tensor, ...]:
    """What the model is traced and probed with: zeros, but integers as ones (a valid token id and an
    attention mask that attends everywhere: an all-zero mask makes nn.TransformerEncoder fail)."""
    return tuple((torch.ones if i.dtype.startswith(("int", "uint")) else torch.zeros)(
        i.shape, dtype=getattr(torch, i.dtype)) for i in inputs)


def to_onnx(module: Any, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Exported:
    """Export a TorchScript module with the first exporter that succeeds; an error naming the cause otherwise."""
    example = example_inputs(inputs)
    names = {"input_names": [i.name for i in inputs], "output_names": [o.name for o in outputs]}
    try:
        model = _torchscript_export(module, example, names)
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        first = CompilationError(
            "convert", f"torch.onnx cannot convert an operator: {_first_line(exc)}",
            "rewrite that part of the model with supported operations, or register a custom ONNX symbolic.")
    except Exception as exc:
        first = CompilationError(
            "convert", f"exporting the TorchScript module to ONNX failed: {_first_line(exc)}",
            TRACE_HINT + " (scripted control flow that depends on data cannot be compiled).")
    else:
        fused = _fused_ops(module)
        return Exported(model, f"TorchScript exported to ONNX opset {OPSET} with torch.onnx (TorchScript exporter)"
                        + (f"; {', '.join(fused)} written out in standard ONNX operators." if fused else "."))
    try:
        model = _dynamo_export(module, example, names)
    except Exception as exc:
        raise CompilationError(first.stage, first.message, f"{first.hint} (torch.onnx's dynamo exporter, tried "
                                                           f"next, failed too: {_innermost(exc)})") from None
    return Exported(model, "TorchScript exported to ONNX with torch.onnx's dynamo exporter (through torch.export), "
                           f"as the TorchScript exporter failed: {first.message}")


def _torchscript_export(module: Any, example: tuple[torch.Tensor, ...], names: dict) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with _quiet(), pytorch_attention.symbolics(OPSET):
        torch.onnx.export(module, example, buffer, opset_version=OPSET, dynamo=False, **names)
    return onnx.load_from_string(buffer.getvalue())


def _dynamo_export(module: Any, example: tuple[torch.Tensor, ...], names: dict) -> onnx.ModelProto:
    from torch._export.converter import TS2EPConverter  # torch's own TorchScript -> ExportedProgram converter

    with _quiet():
        program = TS2EPConverter(module, example).convert()
        exported = torch.onnx.export(program, example, dynamo=True, verbose=False, **names)
    model = exported.model_proto
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def export_program(program: Any, example: tuple[torch.Tensor, ...], names: dict) -> onnx.ModelProto:
    """A torch.export ExportedProgram to ONNX with the dynamo exporter, quietly."""
    with _quiet():
        exported = torch.onnx.export(program, example, dynamo=True, verbose=False, **names)
    model = exported.model_proto
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def _fused_ops(module: Any) -> list[str]:
    try:
        graph = module.inlined_graph
    except (AttributeError, RuntimeError):
        return []
    return [name for name in pytorch_attention.FUSED_OPS if graph.findAllNodes(name, True)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print their IR, warnings and progress; Kiln's notes and errors say what matters."""
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), native_output_silenced(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


def native_output_silenced() -> contextlib.AbstractContextManager[None]:
    """torch's C++ exporter dumps its whole IR graph to stdout on failure; our error says what matters."""
    return fd_silenced(1)


def _innermost(exc: BaseException) -> str:
    """The root cause of a chained exception (the dynamo exporter wraps "No ONNX function found for aten.X")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0][:400] if text else exc.__class__.__name__

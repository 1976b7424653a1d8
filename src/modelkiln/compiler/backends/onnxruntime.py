"""onnxruntime backend: the model optimized offline to a portable ONNX file run by onnxruntime."""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import onnx
import onnxruntime as ort

from modelkiln.errors import CompilationError
from modelkiln.targets import CompilerOptions, Target

from .base import BackendOutput

FILE = "compiled.onnx"


class OnnxRuntimeBackend:
    name = "onnxruntime"
    portable = True
    forms = ("onnx", "onnx-ml")
    emulated_in_python = True

    def version(self) -> str:
        return ort.__version__

    def runtime_requirement(self) -> str:
        return f"onnxruntime=={version('onnxruntime')}"

    def unsupported_reason(self, target: Target, options: CompilerOptions) -> str | None:
        if options.precision != "float32":
            return f"kiln-precision {options.precision} is not applied by onnxruntime's CPU provider"
        return None

    def compile(self, model: onnx.ModelProto, target: Target, options: CompilerOptions, workdir: Path) -> BackendOutput:
        # Extended-level fusions are valid on every CPU; layout passes tied to this host's vector
        # width (NCHWc) run at load time on the device instead.
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(workdir / FILE)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CompilationError("compile", f"onnxruntime cannot optimize the model: {str(exc)[:400]}") from None
        notes = []
        if target.arch != "x86_64" or target.mcpu not in ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"):
            notes.append("onnxruntime picks its CPU kernels on the device at run time: "
                         f"mcpu {target.mcpu} does not change this artifact.")
        return BackendOutput(
            files=[FILE], notes=notes, command="onnxruntime.InferenceSession(graph_optimization_level=ORT_ENABLE_EXTENDED, "
            "optimized_model_filepath=compiled.onnx)",
        )

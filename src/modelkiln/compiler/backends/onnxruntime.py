"""onnxruntime backend: the model optimized offline to a portable ONNX file run by onnxruntime; in int8, first
quantized statically (QDQ, per-channel weights, activation ranges calibrated on the calibration samples)."""
from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from modelkiln.errors import CompilationError
from modelkiln.targets import CompilerOptions, Target

from .base import BackendOutput

if TYPE_CHECKING:
    from modelkiln.compiler.calibration import PrecisionData

FILE = "compiled.onnx"
PRECISIONS = ("float32", "int8")


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
        if options.precision not in PRECISIONS:
            return f"kiln-precision {options.precision} is not applied by onnxruntime's CPU provider"
        return None

    def compile(self, model: onnx.ModelProto, target: Target, options: CompilerOptions, workdir: Path,
                data: PrecisionData | None = None) -> BackendOutput:
        command = ""
        if options.precision == "int8":
            samples = data.calibration if data else []
            model = quantize_int8(model, samples)
            command = ("onnxruntime.quantization.quant_pre_process, then quantize_static(QDQ, per_channel=True, "
                       f"activations QUInt8, weights QInt8, MinMax on {len(samples)} calibration samples); ")
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
            files=[FILE], notes=notes, command=command + "onnxruntime.InferenceSession(graph_optimization_level="
            "ORT_ENABLE_EXTENDED, optimized_model_filepath=compiled.onnx)",
        )


def quantize_int8(model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """Static int8 as onnxruntime's docs make it: pre-process (shape inference, fusions), then QDQ quantization
    with per-channel int8 weights and uint8 activations whose ranges come from the calibration samples."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calibration)

        def get_next(self):
            return next(self.samples, None)

    if not calibration:
        raise CompilationError("compile", "int8 quantization needs calibration samples and got none")
    with tempfile.TemporaryDirectory(prefix="kiln-int8-") as tmp:
        source, prepared, quantized = (Path(tmp) / n for n in ("source.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, str(source))
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as exc:
            raise CompilationError("compile", f"onnxruntime cannot quantize the model to int8: "
                                   f"{str(exc).strip().splitlines()[0][:400] if str(exc).strip() else exc!r}") from None
        return onnx.load(str(quantized))

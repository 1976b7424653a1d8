"""OpenVINO backend: OpenVINO IR (.xml + .bin) for its CPU plugin. float32 by default; bfloat16/float16 run
with that INFERENCE_PRECISION_HINT (weights stay fp32); int8 is quantized by NNCF's post-training
quantization on the calibration samples."""
from __future__ import annotations

import logging
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import openvino as ov

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import fd_silenced
from modelkiln.compiler.accuracy import measure
from modelkiln.targets import CompilerOptions, Target
from modelkiln.targets.options import AccuracyBudget

from .base import BackendOutput

if TYPE_CHECKING:
    from modelkiln.compiler.calibration import PrecisionData

HINTED = ("bfloat16", "float16")  # run with INFERENCE_PRECISION_HINT; int8 is in the IR itself


class OpenVinoBackend:
    name = "openvino"
    portable = True
    forms = ("onnx",)  # its ONNX frontend has no ai.onnx.ml operators
    emulated_in_python = True

    def version(self) -> str:
        return version("openvino")

    def runtime_requirement(self) -> str:
        return f"openvino=={self.version()}"

    def unsupported_reason(self, target: Target, options: CompilerOptions) -> str | None:
        if target.gpu is None and not target.computes_natively(options.precision):
            return (f"{target.name}'s CPU ({target.mcpu}) has no {options.precision} instructions, so OpenVINO "
                    "would compute in float32 (give an mcpu that has them, e.g. sapphirerapids or znver4)")
        return None

    def compile(self, model: onnx.ModelProto, target: Target, options: CompilerOptions, workdir: Path,
                data: PrecisionData | None = None) -> BackendOutput:
        source = workdir / "source.onnx"
        onnx.save(model, str(source))
        command = "openvino.convert_model(model.onnx)"
        try:
            converted = ov.convert_model(str(source))
            if options.precision == "int8":
                if data is None or not data.calibration:
                    raise CompilationError("compile", "int8 quantization needs calibration samples and got none")
                converted, command = quantize_int8(converted, data, options.accuracy, command)
            ov.save_model(converted, str(workdir / "compiled.xml"), compress_to_fp16=False)
        except CompilationError:
            raise
        except Exception as exc:
            raise CompilationError("compile", f"OpenVINO cannot convert the model: {_brief(exc)}") from None
        finally:
            source.unlink()
        notes = []
        if options.precision in HINTED:
            notes.append(f"OpenVINO runs with INFERENCE_PRECISION_HINT={options.precision} (weights stay fp32).")
        return BackendOutput(files=["compiled.xml", "compiled.bin"], notes=notes,
                             command=f"openvino.save_model({command}, compiled.xml, compress_to_fp16=False)")


def quantize_int8(model: ov.Model, data: PrecisionData, budget: AccuracyBudget | None,
                  command: str) -> tuple[ov.Model, str]:
    """NNCF's post-training quantization as its docs show it, ranges from the calibration samples; with a
    budget (kiln-accuracy), its accuracy-control mode: layers that cost most accuracy on the evaluation samples
    go back to float32 until the budget holds. The model, and the call that made it."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    names = [port.get_any_name() for port in model.inputs]
    calibration = nncf.Dataset([{n: sample[n] for n in names} for sample in data.calibration])
    try:
        with fd_silenced(1), fd_silenced(2):  # its progress bars would fill the job log
            if budget is None:
                return (nncf.quantize(model, calibration, subset_size=len(data.calibration)),
                        f"nncf.quantize({command}, <{len(data.calibration)} calibration samples>)")
            validation = nncf.Dataset(list(enumerate(data.evaluation)), lambda item: {n: item[1][n] for n in names})
            drop = budget.bound if budget.metric == "max_rel_err" else 1.0 - budget.bound
            quantized = nncf.quantize_with_accuracy_control(
                model, calibration, validation, _validator(data, budget), max_drop=drop,
                drop_type=nncf.DropType.ABSOLUTE, subset_size=len(data.calibration))
            return quantized, (f"nncf.quantize_with_accuracy_control({command}, <{len(data.calibration)} calibration "
                               f"samples>, <{len(data.evaluation)} evaluation samples>, {budget.describe()})")
    except Exception as exc:
        raise CompilationError("compile", f"NNCF cannot quantize the model to int8: {_brief(exc)}") from None


def _validator(data: PrecisionData, budget: AccuracyBudget):
    """NNCF's validation_fn: the budget's metric against the source's outputs (higher is better)."""
    def validate(compiled: ov.CompiledModel, items) -> float:
        items = list(items)
        outputs = []
        for _, feeds in items:
            result = compiled(feeds)
            outputs.append([result[port] for port in compiled.outputs])
        accuracy = measure(outputs, [data.expected[i] for i, _ in items], budget, data.data)
        if budget.metric == "max_rel_err":
            return -accuracy.max_rel_err
        top1 = accuracy.top1_agreement if budget.metric == "top1_agreement" else None
        return accuracy.cosine if top1 is None else top1
    return validate


def _brief(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip() and "Check '" not in line]
    return " ".join(lines[:3])[:400]

"""OpenVINO backend: OpenVINO IR (.xml + .bin) for its CPU plugin. float32 by default; bfloat16/float16 run
with that INFERENCE_PRECISION_HINT (weights stay fp32); int8 is quantized by NNCF's post-training
quantization on the calibration samples."""
from __future__ import annotations

import logging
from importlib.metadata import version
from pathlib import Path

import onnx
import openvino as ov

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import fd_silenced
from modelkiln.targets import CompilerOptions, Target

from .base import BackendOutput, Samples

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
                calibration: Samples = ()) -> BackendOutput:
        source = workdir / "source.onnx"
        onnx.save(model, str(source))
        command = "openvino.convert_model(model.onnx)"
        try:
            converted = ov.convert_model(str(source))
            if options.precision == "int8":
                converted = quantize_int8(converted, calibration)
                command = f"nncf.quantize({command}, nncf.Dataset(<{len(calibration)} calibration samples>))"
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


def quantize_int8(model: ov.Model, calibration: Samples) -> ov.Model:
    """NNCF's post-training quantization as its docs show it: ranges from the calibration samples."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    if not calibration:
        raise CompilationError("compile", "int8 quantization needs calibration samples and got none")
    names = [port.get_any_name() for port in model.inputs]
    try:
        with fd_silenced(1), fd_silenced(2):  # its progress bars would fill the job log
            return nncf.quantize(model, nncf.Dataset([{n: sample[n] for n in names} for sample in calibration]),
                                 subset_size=len(calibration))
    except Exception as exc:
        raise CompilationError("compile", f"NNCF cannot quantize the model to int8: {_brief(exc)}") from None


def _brief(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip() and "Check '" not in line]
    return " ".join(lines[:3])[:400]

"""OpenVINO backend: OpenVINO IR (.xml + .bin) for its CPU plugin; fp32 unless kiln-precision asks otherwise."""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import onnx
import openvino as ov

from modelkiln.errors import CompilationError
from modelkiln.targets import CompilerOptions, Target

from .base import BackendOutput


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
        return None

    def compile(self, model: onnx.ModelProto, target: Target, options: CompilerOptions, workdir: Path) -> BackendOutput:
        source = workdir / "source.onnx"
        onnx.save(model, str(source))
        try:
            converted = ov.convert_model(str(source))
            ov.save_model(converted, str(workdir / "compiled.xml"), compress_to_fp16=False)
        except Exception as exc:
            raise CompilationError("compile", f"OpenVINO cannot convert the model: {_brief(exc)}") from None
        finally:
            source.unlink()
        notes = []
        if options.precision != "float32":
            notes.append(f"OpenVINO runs with INFERENCE_PRECISION_HINT={options.precision} (weights stay fp32).")
        return BackendOutput(
            files=["compiled.xml", "compiled.bin"],
            command="openvino.save_model(openvino.convert_model(model.onnx), compiled.xml, compress_to_fp16=False)",
            notes=notes,
        )


def _brief(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip() and "Check '" not in line]
    return " ".join(lines[:3])[:400]

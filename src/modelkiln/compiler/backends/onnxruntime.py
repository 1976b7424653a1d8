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

# The first onnxruntime release implementing each (ai.onnx opset, ai.onnx.ml opset, ONNX IR version), from
# onnxruntime's compatibility table (onnxruntime.ai/docs/reference/compatibility.html, "ONNX opset support";
# releases in between implement the same as the row before them). Its last row is 1.20 (= 1.18): a model
# needing more than the last row here asks for the onnxruntime that built it instead.
ORT_SUPPORT = (  # (release, opset, ML opset, IR version)
    ("1.0", 11, 2, 6), ("1.3", 12, 2, 7), ("1.6", 13, 2, 7), ("1.8", 14, 2, 7), ("1.9", 15, 2, 8),
    ("1.11", 16, 2, 8), ("1.12", 17, 3, 8), ("1.14", 18, 3, 8), ("1.15", 19, 3, 8), ("1.16", 19, 3, 9),
    ("1.17", 20, 4, 9), ("1.18", 21, 4, 10),
)
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


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
        # Basic-level rewrites only (constant folding, redundant nodes, Conv+BatchNorm folding) keep standard ONNX
        # operators, which any onnxruntime new enough for the opset runs. The extended fusions write com.microsoft
        # operators tied to this onnxruntime release; the device's onnxruntime applies them, and the layout
        # passes for its CPU, when it loads the file (ORT_ENABLE_ALL), so the artifact runs as fast.
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(workdir / FILE)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CompilationError("compile", f"onnxruntime cannot optimize the model: {str(exc)[:400]}") from None
        saved = "onnxruntime.InferenceSession(graph_optimization_level=ORT_ENABLE_BASIC, " \
                "optimized_model_filepath=compiled.onnx)"
        notes = []
        refused = _reload_error(workdir / FILE)
        if refused:
            # onnxruntime 1.31's MatMulAddFusion fails on its own basic-level output of BERT-like graphs ("Attempt
            # to replace the existing tensor"), though it fuses the unoptimized graph: ship that one instead.
            onnx.save(model, str(workdir / FILE))
            saved = "onnx.save(model, compiled.onnx)"
            notes.append(f"onnxruntime {ort.__version__} cannot load its basic-optimized file with all optimizations "
                         f"({refused}): the model ships unoptimized; the device's onnxruntime optimizes it at load.")
        if target.arch != "x86_64" or target.mcpu not in ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"):
            notes.insert(0, "onnxruntime picks its CPU kernels on the device at run time: "
                         f"mcpu {target.mcpu} does not change this artifact.")
        needed, why = portable_runtime(workdir / FILE)
        notes.append(f"the device needs onnxruntime{needed}: {why}")
        return BackendOutput(files=[FILE], notes=notes, command=command + saved, runtime={"onnxruntime": needed})


def _reload_error(path: Path) -> str | None:
    """Why onnxruntime cannot load the saved file as the device will (ORT_ENABLE_ALL), or None when it can."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = str(exc).strip()  # "[ONNXRuntimeError] : 1 : FAIL : ... : <what failed>": keep the last part
        return text.rsplit(" : ", 1)[-1][-200:] if text else repr(exc)
    return None


def portable_runtime(path: Path) -> tuple[str, str]:
    """The onnxruntime the saved model needs (">=1.12") and why. onnxruntime stamps every domain it knows into the
    saved file's opset imports (ai.onnx.ml 5, com.microsoft, ...), which an older release refuses: those no node
    uses are dropped first, so that the file asks only for what it uses."""
    model = onnx.load(str(path))
    used = _domains(model.graph) | {f.domain for f in model.functions}
    for function in model.functions:
        used |= {n.domain for n in function.node}
    kept = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    if len(kept) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(kept)
        onnx.save(model, str(path))
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in kept}
    built = ".".join(ort.__version__.split(".")[:2])
    what = f"ONNX IR {model.ir_version}, opset {opsets.get('', 1)}" + (
        f", ai.onnx.ml opset {opsets['ai.onnx.ml']}" if "ai.onnx.ml" in opsets else "")
    custom = sorted(d for d in opsets if d not in STANDARD_DOMAINS)
    if custom:
        return f">={built}", (f"{what} and {', '.join(custom)} operators, onnxruntime's own: built with "
                              f"{ort.__version__}")
    for release, opset, ml, ir in ORT_SUPPORT:
        if opsets.get("", 1) <= opset and opsets.get("ai.onnx.ml", 1) <= ml and model.ir_version <= ir:
            return f">={release}", f"{what} (onnxruntime's compatibility table); built with {ort.__version__}"
    return f">={built}", f"{what}, newer than onnxruntime's compatibility table knows; built with {ort.__version__}"


def _domains(graph: onnx.GraphProto) -> set[str]:
    """The operator domains of graph's nodes and of their subgraphs (If, Loop, Scan bodies)."""
    found = set()
    for node in graph.node:
        found.add("" if node.domain == "ai.onnx" else node.domain)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= _domains(sub)
    return found


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

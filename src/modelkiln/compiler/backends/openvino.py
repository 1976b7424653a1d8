"""OpenVINO backend: OpenVINO IR (.xml + .bin) for its CPU plugin. float32 by default; bfloat16/float16 run
with that INFERENCE_PRECISION_HINT (weights stay fp32); int8 is quantized by NNCF's post-training
quantization on the calibration samples, or, for a transformer that misses the budget so, its weights are int8
and the plugin quantizes the activations at run time."""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree

import onnx
import openvino as ov

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import fd_silenced
from modelkiln.compiler.accuracy import Accuracy, measure
from modelkiln.compiler.verify import host_can_run, median_latencies_ms
from modelkiln.runtime.run_openvino import OpenVinoExecutor
from modelkiln.targets import CompilerOptions, Target
from modelkiln.targets.options import AccuracyBudget

from .base import BackendOutput

if TYPE_CHECKING:
    from modelkiln.compiler.calibration import PrecisionData

HINTED = ("bfloat16", "float16")  # run with INFERENCE_PRECISION_HINT; int8 is in the IR itself
# The first OpenVINO release of each operation set, from OpenVINO's "Available Operation Sets" table
# (docs.openvino.ai/2024/documentation/openvino-ir-format/operation-sets/available-opsets.html; its last row is
# 2024.5, opset15). IR v11, which save_model writes, is read from 2022.1 on. An IR using a newer or internal opset
# asks for the OpenVINO that built it.
OPSET_RELEASES = {1: "2020.1", 2: "2020.2", 3: "2020.4", 4: "2021.1", 5: "2021.2", 6: "2021.3", 7: "2021.4",
                  8: "2022.1", 9: "2022.2", 10: "2022.3", 11: "2023.0", 12: "2023.1", 13: "2023.2", 14: "2024.0",
                  15: "2024.5"}
IR_V11_RELEASE = "2022.1"
AC_ITERATIONS, AC_RANKING = 5, 8  # accuracy control: layer groups returned to float32, samples ranked on
AC_BUDGET_S = 120.0  # accuracy control ranks every quantized layer: skipped when that would take longer (measured:
# MPNet-base's 6 minutes of it still missed cosine 0.99)
# An int8 model's float layers run in bf16 only when that times at least this much faster, timed for this long
# (measured in two compiles each: MiniLM-L6's int8 3-5% faster in bf16, NudeNet's YOLOv8n 2-4% slower).
BF16_GAIN, FLOAT_LAYERS_TIMING_S = 0.01, 1.5
AC_COST = 8  # its ranking costs ~8 compiles and ranking runs per layer (measured on MiniLM-L6 and MPNet-base here)
# Dynamic int8: the activation group sizes tried, fastest first (measured on 2 cores: MPNet-base 37 / 41 / 48 ms,
# worst cosine 0.9985 / 0.9989 / 0.9990; MiniLM-L6 6.0 / 6.6 / 7.5 ms), and the first OpenVINO whose CPU plugin
# has the DYNAMIC_QUANTIZATION_GROUP_SIZE property (its 2024 releases; optimum-intel's dynamic quantization
# config, April 2024, asks for it).
DQ_GROUPS = (128, 64, 32)
DQ_RELEASE = "2024.1"
# Activations whose outputs go negative: NNCF's docs advise its MIXED preset (asymmetric activation ranges) for such
# models, as a symmetric range spends half its codes on a sliver below zero. Measured on 256 held-out crops here,
# PERFORMANCE preset -> MIXED: NudeNet's YOLOv8n (Swish) worst cosine 0.9987 -> 0.9994 and PP-LCNet (HSwish) top-1
# 0.938 -> 0.965, neither slower; EfficientNet-Lite0 (ReLU6: Clamp) gained nothing and ran 8% slower with MIXED.
SIGNED_ACTIVATIONS = {"Swish", "HSwish", "Gelu", "Elu", "PRelu", "Mish", "Selu"}
F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # how an int8 IR's float layers run unless timed faster in bf16


@dataclass
class Quantized:
    """An int8 model, the call that made it, and the plugin properties it runs with (compiled.meta
    Backend.Config)."""

    model: ov.Model
    command: str
    config: dict[str, str | int] = field(default_factory=dict)
    data_free: bool = False  # no calibration sample went into it (BackendOutput.data_free)


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
        command, config, data_free = "openvino.convert_model(model.onnx)", {}, False
        try:
            converted = ov.convert_model(str(source))
            if options.precision == "int8":
                if data is None or not data.calibration:
                    raise CompilationError("compile", "int8 quantization needs calibration samples and got none")
                quantized = quantize_int8(converted, data, options.accuracy, command)
                converted, command, config = quantized.model, quantized.command, quantized.config
                data_free = quantized.data_free
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
        if options.precision == "int8":
            if "DYNAMIC_QUANTIZATION_GROUP_SIZE" in config:
                notes.append("int8 weights; the CPU plugin quantizes each MatMul's activations to int8 at run time, "
                             f"in groups of {config['DYNAMIC_QUANTIZATION_GROUP_SIZE']} "
                             "(DYNAMIC_QUANTIZATION_GROUP_SIZE, recorded in compiled.meta Backend.Config)")
            if host_can_run(target) and target.computes_natively("bfloat16"):
                names = [port.get_any_name() for port in converted.inputs]
                hint, note = float_layers(workdir / "compiled.xml", names, data, options.accuracy, config, data_free)
                notes.append(note)
                if hint != F32["INFERENCE_PRECISION_HINT"]:
                    config = {**config, "INFERENCE_PRECISION_HINT": hint}
        needed, why = ir_runtime(workdir / "compiled.xml")
        if "DYNAMIC_QUANTIZATION_GROUP_SIZE" in config and _release(DQ_RELEASE) > _release(needed[2:]):
            needed, why = f">={DQ_RELEASE}", f"its activations are quantized at run time, which needs {DQ_RELEASE}"
        notes.append(f"the device needs openvino{needed}: {why}")
        return BackendOutput(files=["compiled.xml", "compiled.bin"], notes=notes, runtime={"openvino": needed},
                             entry={"Config": config} if config else {}, data_free=data_free,
                             command=f"openvino.save_model({command}, compiled.xml, compress_to_fp16=False)")


def float_layers(xml: Path, names: list[str], data: PrecisionData, budget: AccuracyBudget | None,
                 config: dict[str, str | int], data_free: bool) -> tuple[str, str]:
    """The INFERENCE_PRECISION_HINT for an int8 IR's float layers (those NNCF leaves in float, or accuracy control
    restored), and a note saying why. Which is faster depends on the model (see BF16_GAIN), so both are timed;
    bf16 ships only when it is faster by BF16_GAIN and the budget still holds on the evaluation samples."""
    executors = {hint: OpenVinoExecutor(xml, {**config, "INFERENCE_PRECISION_HINT": hint}, None)
                 for hint in ("f32", "bf16")}
    timing = median_latencies_ms(executors, [data.evaluation[0][n] for n in names], budget_s=FLOAT_LAYERS_TIMING_S)
    f32, bf16 = timing.latencies_ms["f32"], timing.latencies_ms["bf16"]
    timed = f"{bf16:#.3g} ms with them in bf16 against {f32:#.3g} ms in f32"
    if bf16 > f32 * (1 - BF16_GAIN):
        return "f32", f"the int8 model's float layers run in f32: {timed}"
    accuracy = _accuracy(lambda feeds: executors["bf16"].run([feeds[n] for n in names]), data, budget,
                         data_free=data_free)
    if not accuracy.met:
        return "f32", (f"the int8 model's float layers run in f32: {timed}, but in bf16 it misses the budget: "
                       f"{accuracy.describe()}")
    return "bf16", f"the int8 model's float layers run in bf16 (INFERENCE_PRECISION_HINT=bf16): {timed}"


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split("."))


def ir_runtime(xml: Path) -> tuple[str, str]:
    """The OpenVINO the IR needs (">=2023.0"), from the operation sets its layers use, and why."""
    root = ElementTree.parse(xml).getroot()
    used = {layer.get("version", "") for layer in root.iter("layer")}
    numbers = [int(m.group(1)) for m in (re.fullmatch(r"opset(\d+)", v) for v in used) if m]
    built = ".".join(version("openvino").split(".")[:2])
    others = sorted(v for v in used if not re.fullmatch(r"opset\d+", v))
    newest = max(numbers, default=1)
    if others or newest not in OPSET_RELEASES:
        what = ", ".join(others) if others else f"opset{newest}"
        return f">={built}", f"the IR uses {what}, beyond OpenVINO's opset table here: built with {version('openvino')}"
    floor = OPSET_RELEASES[newest]
    if int(root.get("version", "10")) >= 11:
        floor = max(floor, IR_V11_RELEASE, key=_release)
    return f">={floor}", (f"IR v{root.get('version')} with operations up to opset{newest} (OpenVINO's opset table); "
                          f"built with {version('openvino')}, and an older CPU plugin may lack a kernel for one of "
                          "them")


def quantize_int8(model: ov.Model, data: PrecisionData, budget: AccuracyBudget | None, command: str) -> Quantized:
    """NNCF's post-training quantization as its docs show it, ranges from the calibration samples. When that
    result misses the budget (kiln-accuracy, else the default per output): for a transformer, int8 weights with
    activations quantized at run time (dynamic_int8); then NNCF's accuracy-control mode: the layers that cost most
    accuracy on the evaluation samples go back to float32 until the budget holds (a bounded search: ranking every
    layer of a large model compiles it once per layer)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    nncf.set_log_level(logging.ERROR)
    names = [port.get_any_name() for port in model.inputs]
    calibration = nncf.Dataset([{n: sample[n] for n in names} for sample in data.calibration])
    # NNCF's docs: ModelType.TRANSFORMER for transformers (it keeps the parts int8 hurts most, such as the
    # attention's softmax inputs, in float). Measured on MPNet-base: worst cosine 0.97 with it, -0.05 without.
    transformer = is_transformer(model)  # whose NNCF defaults already quantize activations asymmetrically
    signed = not transformer and bool(SIGNED_ACTIVATIONS & {op.get_type_name() for op in model.get_ordered_ops()})
    kind = ({"model_type": nncf.ModelType.TRANSFORMER} if transformer else
            {"preset": nncf.QuantizationPreset.MIXED} if signed else {})
    samples = f"<{len(data.calibration)} calibration samples>" + (
        ", model_type=TRANSFORMER" if transformer else ", preset=MIXED" if signed else "")
    wanted = budget.describe() if budget else "the default budget"
    try:
        with fd_silenced(1), fd_silenced(2):  # its progress bars would fill the job log
            quantized = nncf.quantize(model, calibration, subset_size=len(data.calibration), **kind)
            plain = f"nncf.quantize({command}, {samples})"
            start = time.perf_counter()
            compiled = ov.Core().compile_model(quantized, "CPU", F32)  # judged as it ships (float layers in f32)
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            accuracy = _accuracy(_outputs(compiled), data, budget)
            if accuracy.met:
                return Quantized(quantized, plain)
            if accuracy.hint:  # too few evaluation samples to show the budget, whatever goes back to float32
                return Quantized(quantized, f"{plain}; its result misses {wanted}, and accuracy control cannot "
                                            f"help: {accuracy.hint}")
            run_s = (time.perf_counter() - start) / max(1, len(data.evaluation))
            tried = ""
            if transformer:
                dynamic, missed = dynamic_int8(model, data, budget, command)
                if dynamic:
                    return Quantized(dynamic.model, f"{plain} missed {wanted} ({accuracy.describe()}); then "
                                                    f"{dynamic.command}", dynamic.config, data_free=True)
                tried = f"; int8 weights with activations quantized at run time missed {wanted} too ({missed})"
            layers = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops()) // 2
            ranking_s = AC_COST * layers * (compile_s + run_s * min(AC_RANKING, len(data.evaluation)))
            if ranking_s > AC_BUDGET_S:
                return Quantized(quantized, f"{plain}; its result misses {wanted}{tried}, and accuracy control was "
                                            f"skipped: ranking its ~{layers} quantized layers would take "
                                            f"~{ranking_s:.0f} s here (limit {AC_BUDGET_S:.0f} s)")
            validation = nncf.Dataset(list(enumerate(data.evaluation)), lambda item: {n: item[1][n] for n in names})
            restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=AC_ITERATIONS,
                                                          ranking_subset_size=min(AC_RANKING, len(data.evaluation)))
            # The score is the budget's margin (accuracy.measure), which the source itself holds in full: a drop
            # of all of it is the budget met.
            ideal = measure(data.expected, data.expected, budget, data.data).margin

            def score(compiled: ov.CompiledModel, items) -> float:
                return _accuracy(_outputs(compiled), data, budget, items).margin
            quantized = nncf.quantize_with_accuracy_control(
                model, calibration, validation, score,
                max_drop=ideal, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(data.calibration),
                advanced_accuracy_restorer_parameters=restorer, **kind)
            return Quantized(quantized, f"nncf.quantize_with_accuracy_control({command}, {samples}, "
                                        f"<{len(data.evaluation)} evaluation samples>, {wanted}, "
                                        f"max_num_iterations={AC_ITERATIONS}){tried}")
    except Exception as exc:
        raise CompilationError("compile", f"NNCF cannot quantize the model to int8: {_brief(exc)}") from None


def dynamic_int8(model: ov.Model, data: PrecisionData, budget: AccuracyBudget | None,
                 command: str) -> tuple[Quantized | None, str]:
    """int8 weights (NNCF's weight compression) whose MatMuls the CPU plugin runs in int8, quantizing their
    activations at run time, a range per group of DQ_GROUPS values of each row: slower than static int8, but far
    more accurate on a transformer, whose activations have outlier channels no single calibrated range fits
    (measured in groups of 32: MiniLM-L6 worst cosine 0.9994 against 0.996 static; MPNet-base 0.9989 against
    0.973). The largest group that meets the budget (the fastest), or None and the smallest group's figures. No
    sample goes into it, so every sample judges it, calibration ones too."""
    import nncf

    compressed = nncf.compress_weights(model.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
    core = ov.Core()
    for group in DQ_GROUPS:
        config = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": group}
        accuracy = _accuracy(_outputs(core.compile_model(compressed, "CPU", {**F32, **config})), data, budget,
                             data_free=True)
        if accuracy.met:
            return Quantized(compressed, f"nncf.compress_weights({command}, mode=INT8_ASYM) run with "
                                         f"DYNAMIC_QUANTIZATION_GROUP_SIZE={group}", config), ""
    return None, f"groups of {DQ_GROUPS[-1]}: {accuracy.describe()}"


def is_transformer(model: ov.Model) -> bool:
    """Attention and layer normalization: a Softmax, a MatMul of two computed tensors, and MVN (LayerNorm)."""
    ops = model.get_ordered_ops()
    types = {op.get_type_name() for op in ops}
    attention = any(op.get_type_name() == "MatMul" and not any(
        i.get_source_output().get_node().get_type_name() == "Constant" for i in op.inputs()) for op in ops)
    return attention and {"Softmax", "MVN"} <= types


def _accuracy(run: Callable[[dict], list], data: PrecisionData, budget: AccuracyBudget | None, items=None,
              data_free: bool = False) -> Accuracy:
    """A model's outputs (run: feeds by name -> outputs) against the source's: on every sample it was not made from
    (PrecisionData.unseen_by), or on NNCF's (index, feeds) items of the evaluation samples."""
    if items is None:
        samples, expected = data.unseen_by("int8", data_free)
        return measure([run(feeds) for feeds in samples], expected, budget, data.data)
    items = list(items)
    return measure([run(feeds) for _, feeds in items], [data.expected[i] for i, _ in items], budget, data.data)


def _outputs(compiled: ov.CompiledModel) -> Callable[[dict], list]:
    """Run a compiled model on feeds by name: its outputs in order."""
    def run(feeds: dict) -> list:
        result = compiled(feeds)
        return [result[port] for port in compiled.outputs]
    return run


def _brief(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip() and "Check '" not in line]
    return " ".join(lines[:3])[:400]

"""Run OpenVINO IR artifacts (.xml + .bin) on the CPU plugin."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

try:
    from openvino import Core
except ImportError:  # OpenVINO before 2023.1 has it in openvino.runtime only
    from openvino.runtime import Core

# The plugin's INFERENCE_PRECISION_HINT per artifact precision. An int8 IR carries its own FakeQuantize ops (or
# int8 weights whose activations the plugin quantizes at run time), and the hint sets the precision of the layers
# it leaves in float: f32 unless compiled.meta's Backend.Config names what its compile measured faster.
PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "int8": "f32"}


def plugin_config(meta: dict) -> dict[str, str | int]:
    """The CPU plugin properties an artifact runs with: its precision's hint, then those its compile chose
    (compiled.meta Backend.Config: INFERENCE_PRECISION_HINT, DYNAMIC_QUANTIZATION_GROUP_SIZE)."""
    return {"INFERENCE_PRECISION_HINT": PRECISIONS[meta.get("Precision", "float32")],
            **meta["Backend"].get("Config", {})}


# The runtime model's layers that do the arithmetic; which kernel and precision each got is what a report should say
COMPUTE_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatMul", "ScaledDotProductAttention")


class OpenVinoExecutor:
    def __init__(self, xml_path: Path, config: dict[str, str | int], threads: int | None) -> None:
        config = {**config, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = Core()
        self._compiled = core.compile_model(core.read_model(str(xml_path)), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def kernels(self) -> str:
        """The compute layers as the CPU plugin runs them on this host: how many of each layer type ran in which
        precision with which kernel (its primitiveType: `amx` in the name means AMX tiles, `dw` depthwise)."""
        counts: Counter[tuple[str, str, str]] = Counter()
        for node in self._compiled.get_runtime_model().get_ordered_ops():
            info = node.get_rt_info()
            fields = [info[k].astype(str) if k in info else "?" for k in ("layerType", "runtimePrecision", "primitiveType")]
            if fields[0] in COMPUTE_LAYERS:
                counts[(fields[0], fields[1], fields[2])] += 1
        ran = ", ".join(f"{n} {layer} in {precision} with {kernel}" for (layer, precision, kernel), n in counts.most_common())
        return f"on this host OpenVINO's CPU plugin ran {ran or 'no convolution or matmul layer'}"

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # share_inputs: the plugin reads the caller's arrays in place for this synchronous call instead of copying
        # them in (measured 0.5-1% of a 2-4 ms CNN); the outputs are the request's copies, not views it reuses.
        return list(self._request.infer(inputs, share_inputs=True).to_tuple())


def open(directory: Path, meta: dict, threads: int | None) -> OpenVinoExecutor:
    return OpenVinoExecutor(directory / meta["Backend"]["Files"][0], plugin_config(meta), threads)

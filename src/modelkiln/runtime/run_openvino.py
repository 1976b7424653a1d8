"""Run OpenVINO IR artifacts (.xml + .bin) on the CPU plugin."""
from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    from openvino import Core
except ImportError:  # OpenVINO before 2023.1 has it in openvino.runtime only
    from openvino.runtime import Core

# The plugin's INFERENCE_PRECISION_HINT per artifact precision. An int8 IR carries its own FakeQuantize ops, and the
# hint sets the precision of the layers it leaves in float: f32 unless compiled.meta's Backend.InferencePrecision
# names the one its compile measured faster (bf16 on some models, on CPUs that compute it).
PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "int8": "f32"}


class OpenVinoExecutor:
    def __init__(self, xml_path: Path, hint: str, threads: int | None) -> None:
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = Core()
        self._compiled = core.compile_model(core.read_model(str(xml_path)), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        results = self._request.infer(inputs)
        return [np.array(results[o]) for o in self._compiled.outputs]


def open(directory: Path, meta: dict, threads: int | None) -> OpenVinoExecutor:
    hint = meta["Backend"].get("InferencePrecision") or PRECISIONS[meta.get("Precision", "float32")]
    return OpenVinoExecutor(directory / meta["Backend"]["Files"][0], hint, threads)

"""Run onnxruntime artifacts (an ONNX model optimized offline; hardware-specific passes run at load)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxRuntimeExecutor:
    def __init__(self, model_path: Path, threads: int | None) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._session.run(None, dict(zip(self._inputs, inputs)))]


def open(directory: Path, meta: dict, threads: int | None) -> OnnxRuntimeExecutor:
    return OnnxRuntimeExecutor(directory / meta["Backend"]["Files"][0], threads)

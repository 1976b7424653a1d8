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
        outputs = self._session.get_outputs()
        self._outputs = [o.name for o in outputs]
        # Tensor outputs come back as ndarrays already; only sequences and maps (onnx-ml) need converting.
        self._tensors = all(o.type.startswith("tensor(") for o in outputs)
        # InferenceSession.run checks the feed's names in Python before calling its compiled session (`_sess`, there
        # since onnxruntime 1.0); Model has checked names, shapes and dtypes already, and 2 µs is 5% of a small
        # model's call. The public method stands in where a release lacks the attribute.
        self._run = getattr(self._session, "_sess", self._session).run

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        results = self._run(self._outputs, dict(zip(self._inputs, inputs)), None)
        return results if self._tensors else [np.asarray(o) for o in results]


def open(directory: Path, meta: dict, threads: int | None) -> OnnxRuntimeExecutor:
    return OnnxRuntimeExecutor(directory / meta["Backend"]["Files"][0], threads)

"""Run Treelite artifacts: a shared library built from TL2cgen's C, loaded with ctypes (numpy only).

The library exports `kiln_predict(data, n_rows, n_features, out, threads)` over a row-major float32
matrix (NaN = missing value) and `kiln_outputs_per_row()`; see compiler/backends/treelite.py. A binary
classifier whose output is declared [N, 2] (scikit-learn's predict_proba) gets column 0 as 1 - P(class 1).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np


class TreeliteExecutor:
    def __init__(self, library: Path, meta: dict, threads: int | None) -> None:
        self._lib = ctypes.CDLL(str(library.resolve()))
        self._lib.kiln_predict.restype = ctypes.c_int
        self._lib.kiln_predict.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p,
                                           ctypes.c_int32]
        self._features = int(self._lib.kiln_num_feature())
        self._per_row = int(self._lib.kiln_outputs_per_row())
        output = meta["Model"]["Outputs"][0]
        self._row_shape = tuple(output["shape"][1:])
        self._dtype = np.dtype(output["dtype"])
        self._threads = threads or os.cpu_count() or 1

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = np.ascontiguousarray(inputs[0], dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._features:
            raise ValueError(f"input must be [rows, {self._features}], got {list(x.shape)}")
        out = np.empty((x.shape[0], self._per_row), self._dtype)
        status = self._lib.kiln_predict(x.ctypes.data, x.shape[0], self._features, out.ctypes.data, self._threads)
        if status != 0:
            raise RuntimeError(f"the compiled trees failed (kiln_predict returned {status})")
        if self._per_row == 1 and self._row_shape == (2,):  # a binary classifier's trees give P(class 1)
            out = np.concatenate([1 - out, out], axis=1)
        return [out.reshape((x.shape[0], *self._row_shape))]


def open(directory: Path, meta: dict, threads: int | None) -> TreeliteExecutor:
    return TreeliteExecutor(directory / meta["Backend"]["Files"][0], meta, threads)

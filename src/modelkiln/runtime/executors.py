"""One executor per backend, each importing only its own runtime package, on first use."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

# compiled.meta Backend.Name -> module holding `open(directory, meta, threads) -> Executor`.
EXECUTORS = {
    "iree": "modelkiln.runtime.run_iree",
    "onnxruntime": "modelkiln.runtime.run_onnxruntime",
    "openvino": "modelkiln.runtime.run_openvino",
    "treelite": "modelkiln.runtime.run_treelite",
    "tvm": "modelkiln.runtime.run_tvm",
}


class Executor(Protocol):
    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run once on inputs in the model's input order; outputs in the model's output order."""
        ...


def open_executor(directory: Path, meta: dict, threads: int | None = None) -> Executor:
    """Load the compiled files in `directory` with the runtime of the backend that built them."""
    name = meta["Backend"]["Name"]
    if name not in EXECUTORS:
        raise ValueError(f"artifact built by unknown backend {name!r}; this runtime knows {', '.join(EXECUTORS)}")
    return importlib.import_module(EXECUTORS[name]).open(directory, meta, threads)


def kernels_note(executor: Executor) -> str | None:
    """What the executor's runtime ran, kernel by kernel, where it can say (OpenVINO's CPU plugin); else None."""
    kernels = getattr(executor, "kernels", None)  # an optional capability: the other runtimes do not expose theirs
    return kernels() if kernels else None

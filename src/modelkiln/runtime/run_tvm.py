"""Run TVM artifacts (an exported Relax VM library) with apache-tvm, on the CPU, CUDA or OpenCL.

Imports only tvm and numpy: devices run this with nothing of Kiln but modelkiln.runtime.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _device(kind: str):
    import tvm

    if kind in ("cpu", "local", "llvm"):
        return tvm.cpu(0)
    if kind == "cuda":
        return tvm.cuda(0)
    if kind == "opencl":
        return tvm.opencl(0)
    raise ValueError(f"unknown TVM device {kind!r}")


class TvmExecutor:
    def __init__(self, library: Path, entry: str, threads: int | None, device: str = "cpu") -> None:
        if threads:
            # TVM's CPU thread pool reads TVM_NUM_THREADS when first started; reconfigure in case it already is.
            os.environ["TVM_NUM_THREADS"] = str(threads)
        import tvm
        from tvm import relax

        if threads:
            config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
            if config is not None:
                config(1, threads)  # 1: big cores first, `threads` workers
        self._device = _device(device)
        if not self._device.exist:
            raise RuntimeError(f"no {device} device is available to TVM here (is this apache-tvm built with {device}?)")
        self._tvm = tvm
        self._module = tvm.runtime.load_module(str(library))
        self._vm = relax.VirtualMachine(self._module, self._device)
        self._function = self._vm[entry]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        args = [self._tvm.runtime.tensor(np.ascontiguousarray(a), self._device) for a in inputs]
        out = self._function(*args)
        return [np.asarray(o) for o in _flatten(out)]


def _flatten(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("Array", "List", "Tuple"):
        return [x for item in value for x in _flatten(item)]
    return [np.asarray(value)]


def device_name(kind: str) -> str | None:
    """The name of TVM's first `kind` (cuda, opencl) device here, or None when there is none."""
    try:
        device = _device(kind)
        if not device.exist:
            return None
        return str(device.device_name or kind)
    except Exception:  # runtime built without that API, or no driver
        return None


def open(directory: Path, meta: dict, threads: int | None) -> TvmExecutor:
    backend = meta["Backend"]
    files = backend.get("Files") or ["compiled.so"]
    return TvmExecutor(directory / files[0], backend.get("Entry", "main"), threads, backend.get("Device", "cpu"))

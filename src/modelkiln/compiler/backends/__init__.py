"""Compiler backends behind one interface (base.Backend); each says which model forms it takes. To add one: write a module with a class that
implements Backend, register it in BACKENDS, add an executor to runtime/executors.py, and name it in
the target catalog's backend lists."""
from __future__ import annotations

from .base import Backend, BackendOutput, GpuBackend
from .iree import IreeBackend
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend
from .treelite import TreeliteBackend
from .tvm import TvmBackend

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (OnnxRuntimeBackend(), OpenVinoBackend(), IreeBackend(), TreeliteBackend(), TvmBackend())
}

__all__ = ["BACKENDS", "Backend", "BackendOutput", "GpuBackend"]

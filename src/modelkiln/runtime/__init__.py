"""Kiln's runtime: load and run an artifact on the device. Depends on nothing else in Kiln.

Install alone with `pip install modelkiln[iree]` (or `[onnxruntime]`, `[openvino]`): only the runtime
of the backend that built the artifact is imported. Treelite artifacts (tree models) are shared libraries
loaded with ctypes: they need numpy alone.
"""
from modelkiln.runtime.model import ArtifactError, DLRModel, Model

__all__ = ["ArtifactError", "DLRModel", "Model"]

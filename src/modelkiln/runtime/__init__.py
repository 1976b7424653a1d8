"""Kiln's runtime: load and run an artifact on the device. Depends on nothing else in Kiln.

On a device, install it alone as the modelkiln-runtime wheel (`make runtime-wheel`; Python 3.8+) with the backend's
extra, e.g. `modelkiln_runtime-<version>-py3-none-any.whl[onnxruntime]`: only the runtime of the backend that
built the artifact is imported. Treelite artifacts (tree models) are shared libraries loaded with ctypes: they need
numpy alone.
"""
from modelkiln.runtime.model import ArtifactError, DLRModel, Model

__all__ = ["ArtifactError", "DLRModel", "Model"]

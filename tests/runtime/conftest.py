"""Fixtures of the runtime tests."""
from __future__ import annotations

import pytest

from ..conftest import compile_cnn


@pytest.fixture(scope="session")
def ort_artifact(models, tmp_path_factory):
    """The small CNN compiled for generic x86-64 (LINUX/X86_64) with onnxruntime: (report, output folder)."""
    out = tmp_path_factory.mktemp("x86-ort")
    return compile_cnn(models, out, target_platform={"Os": "LINUX", "Arch": "X86_64"},
                       compiler_options='{"kiln-backend": "onnxruntime"}'), out

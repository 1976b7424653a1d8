"""The portable backends' aarch64 artifacts run under qemu-user, in an arm64 Python with the aarch64
wheels of their runtimes (make cross-runtimes unpacks them), like the IREE modules do."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from onnx import TensorProto
from onnx.helper import make_node, make_tensor_value_info

from modelkiln.compiler import emulation
from modelkiln.compiler.backends import BACKENDS

from ..conftest import compile_cnn, onnx_model

ARM64 = {"Os": "LINUX", "Arch": "ARM64"}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_portable_backend_runs_on_aarch64_under_qemu(models, tmp_path, backend):
    report = compile_cnn(models, tmp_path, target_platform=ARM64,
                         compiler_options=json.dumps({"kiln-backend": backend}))
    winner = report.winner()
    assert winner.backend == backend and report.target["arch"] == "aarch64"
    check = winner.check
    assert check.status == "verified", check
    assert "qemu" in check.ran_on and "aarch64 Python 3.11" in check.ran_on
    assert f"{backend} {BACKENDS[backend].version()}" in check.ran_on
    assert check.max_rel_err <= 1e-3
    assert winner.latency_ms is None  # never timed under emulation


def test_the_emulated_python_is_aarch64_with_the_venvs_runtime_versions():
    for backend in ("onnxruntime", "openvino"):
        emu = emulation.find_python_emulator("aarch64", BACKENDS[backend].runtime_requirement())
        assert isinstance(emu, emulation.PythonEmulator), emu
    proc = subprocess.run([emu.qemu, "-L", str(emu.root), str(emu.python), "-I", "-S", "-c",
                           "import platform, sys; print(platform.machine(), sys.version_info[:2])"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split()[0] == "aarch64"
    assert "(3, 11)" in proc.stdout


def test_unavailable_emulation_says_why():
    assert "armv7" in emulation.find_python_emulator("armv7", "onnxruntime==1.0")
    reason = emulation.find_python_emulator("aarch64", "onnxruntime==0.0.1")
    assert isinstance(reason, str) and "0.0.1" in reason and "make cross-runtimes" in reason


def test_without_the_root_the_same_bytes_run_on_the_host(models, tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CROSS_DIR", str(tmp_path / "nothing-here"))
    report = compile_cnn(models, tmp_path / "out", target_platform=ARM64,
                         compiler_options='{"kiln-backend": "onnxruntime"}')
    check = report.winner().check
    assert check.status == "checked: same file on host" and "same bytes" in check.ran_on
    assert "no aarch64 Python is unpacked" in check.detail


def test_a_failure_under_emulation_is_reported_with_the_runtime_error(tmp_path):
    # Gemm on a 3-D input: onnxruntime refuses it at load time, inside the emulated Python.
    onnx_model(tmp_path / "bad.onnx", [make_node("Gemm", ["x", "y"], ["z"])],
               [make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
                make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
               [make_tensor_value_info("z", TensorProto.FLOAT, [2, 5])])
    emu = emulation.find_python_emulator("aarch64", BACKENDS["onnxruntime"].runtime_requirement())
    assert isinstance(emu, emulation.PythonEmulator), emu
    meta = {"Backend": {"Name": "onnxruntime", "Files": ["bad.onnx"]}}
    with pytest.raises(RuntimeError) as err:
        emulation.run_runtime(emu, tmp_path, meta, [np.zeros((2, 3, 4), np.float32), np.zeros((4, 5), np.float32)])
    first = str(err.value).splitlines()[0]
    assert "onnxruntime in aarch64 Python under qemu-user failed" in first
    assert "Gemm" in str(err.value) or "rank" in str(err.value).lower()

"""The TVM backend on small onnx.helper models: a CPU build runs and matches onnxruntime; CUDA builds for sm_53 and
sm_37 hold PTX with the right .target and an ISA no newer than asked, which ptxas assembles (when installed);
Mali builds hold an ARM host library and OpenCL C that PoCL builds (pyopencl + pocl-binary-distribution)."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelkiln.compiler.backends.tvm import TvmBackend, extract_opencl, extract_ptx, split_opencl, static_check
from modelkiln.errors import CompilationError
from modelkiln.runtime import run_tvm
from modelkiln.targets import CompilerOptions, Gpu, Target

BACKEND = TvmBackend()
OPTIONS = CompilerOptions()


def _model(nodes, inputs, outputs, inits, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def convnet() -> onnx.ModelProto:
    """conv + relu + global average pool + gemm + softmax on a 1x3x32x32 input."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
             for name, shape in (("w", (8, 3, 3, 3)), ("b", (8,)), ("fw", (10, 8)), ("fb", (10,)))]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["l"], transB=1),
        helper.make_node("Softmax", ["l"], ["y"], axis=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits, "convnet")


def matmul() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], [w], "mm")


def target(arch: str, gpu: Gpu | None = None) -> Target:
    triple, mcpu, features = {
        "x86_64": ("x86_64-linux-gnu", "x86-64-v2", ()),
        "aarch64": ("aarch64-linux-gnu", "cortex-a57", ("+neon",)),
        "armv7": ("armv7a-linux-gnueabihf", "cortex-a17", ("+neon", "+vfp4")),
    }[arch]
    return Target(name=f"test/{arch}", arch=arch, triple=triple, mcpu=mcpu, features=features, backends=("tvm",),
                  device_type="cpu" if gpu is None else ("gpu" if gpu.api == "cuda" else gpu.api), gpu=gpu)


def _input(model: onnx.ModelProto) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(2).standard_normal(shape).astype(np.float32)


def _elf(path: Path) -> str:
    return subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout


@pytest.mark.parametrize("make", [convnet, matmul])
def test_cpu_build_matches_onnxruntime(make, tmp_path):
    model = make()
    out = BACKEND.compile(model, target("x86_64"), OPTIONS, tmp_path)
    assert out.files == ["compiled.so"] and out.entry == {"Entry": "main", "Device": "cpu"}
    executor = run_tvm.open(tmp_path, {"Backend": {"Files": out.files, **out.entry}}, threads=1)
    x = _input(model)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(executor.run([x])[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("code,isa", [("sm_53", "6.3"), ("sm_53", None), ("sm_37", "5.0")])
def test_cuda_ptx(code, isa, tmp_path):
    tgt = target("aarch64", Gpu("cuda", code, isa))
    assert BACKEND.unsupported_reason(tgt, OPTIONS) is None
    out = BACKEND.compile(convnet(), tgt, OPTIONS, tmp_path)
    assert out.entry == {"Entry": "main", "Device": "cuda"} and out.files == ["compiled.so"]
    assert "ARM aarch64" in _elf(tmp_path / "compiled.so")
    ptx = extract_ptx((tmp_path / "compiled.so").read_bytes())
    assert ptx is not None and f"\n.target {code}" in ptx
    major, minor = (int(p) for p in ptx.split("\n.version ", 1)[1].split()[0].split("."))
    if isa:
        assert (major, minor) <= tuple(int(p) for p in isa.split("."))
    assert "bar.sync" in ptx  # shared-memory schedules build (TVM's barrier call is rewritten for LLVM 22)
    checked = static_check(tmp_path, out, tgt)
    assert f".target {code}" in checked
    if code == "sm_53":
        assert "assembled for sm_53 by ptxas 12.9" in checked
    else:  # CUDA 12's ptxas dropped sm_37: the report says it was not assembled
        assert "not assembled (ptxas 12.9 does not know sm_37)" in checked


def test_static_check_rejects_corrupt_ptx(tmp_path):
    tgt = target("aarch64", Gpu("cuda", "sm_53", "6.3"))
    out = BACKEND.compile(matmul(), tgt, OPTIONS, tmp_path)
    library = tmp_path / "compiled.so"
    good = library.read_bytes()
    # Another .target: caught by the directive check, ptxas or not.
    library.write_bytes(good.replace(b"\n.target sm_53", b"\n.target sm_52"))
    with pytest.raises(CompilationError, match="targets sm_52"):
        static_check(tmp_path, out, tgt)
    # A newer ISA than cuda-ver allows.
    version = good.split(b"\n.version ", 1)[1][:3]
    library.write_bytes(good.replace(b"\n.version " + version, b"\n.version 7.8"))
    with pytest.raises(CompilationError, match="newer than the 6.3"):
        static_check(tmp_path, out, tgt)
    # An unknown instruction (same length, so the embedded blob stays consistent): ptxas rejects it.
    assert b"ret;" in good
    library.write_bytes(good.replace(b"ret;", b"rex;"))
    with pytest.raises(CompilationError, match="ptxas rejects"):
        static_check(tmp_path, out, tgt)


@pytest.mark.parametrize("arch,code,elf", [("aarch64", "mali-t860", "ARM aarch64"), ("armv7", "mali-t760", "32-bit LSB")])
def test_mali_opencl(arch, code, elf, tmp_path):
    tgt = target(arch, Gpu("opencl", code))
    out = BACKEND.compile(convnet(), tgt, OPTIONS, tmp_path)
    assert out.entry == {"Entry": "main", "Device": "opencl"}
    library = tmp_path / "compiled.so"
    assert elf in _elf(library)
    if arch == "armv7":
        attributes = subprocess.run(["readelf", "-A", str(library)], capture_output=True, text=True).stdout
        assert "Tag_ABI_VFP_args: VFP registers" in attributes  # hard-float
    source = extract_opencl(library.read_bytes())
    assert source is not None
    kernels = split_opencl(source)
    assert kernels and all("__kernel" in body for body in kernels.values())
    checked = static_check(tmp_path, out, tgt)
    assert f"{len(kernels)} kernels built by Portable Computing Language" in checked


def test_opencl_static_check_rejects_bad_kernel(tmp_path):
    tgt = target("aarch64", Gpu("opencl", "mali-t860"))
    out = BACKEND.compile(matmul(), tgt, OPTIONS, tmp_path)
    library = tmp_path / "compiled.so"
    good = library.read_bytes()
    assert b"__kernel void" in good
    library.write_bytes(good.replace(b"__global float*", b"__global flaot*", 1))
    with pytest.raises(CompilationError, match="does not build"):
        static_check(tmp_path, out, tgt)


def test_unsupported_operator_is_named(tmp_path):
    graph = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], name="foo0")], "bad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    with pytest.raises(CompilationError, match="'Foo'"):
        BACKEND.compile(model, target("x86_64"), OPTIONS, tmp_path)


def test_unsupported_reason():
    assert BACKEND.unsupported_reason(target("aarch64", Gpu("cuda", "sm_53")), OPTIONS) is None
    assert "float32" in BACKEND.unsupported_reason(target("x86_64"), dataclasses.replace(OPTIONS, precision="float16"))
    assert BACKEND.runtime_requirement() == "apache-tvm==0.27.0.post1"


def test_opencl_kernels_run_on_pocl_and_match_onnxruntime():
    from modelkiln.compiler.backends.tvm_pocl import run_on_pocl

    model = convnet()
    x = _input(model)
    outputs, where = run_on_pocl(model, target("aarch64", Gpu("opencl", "mali-t860")), [x])
    assert where.startswith("PoCL (OpenCL 3.0 PoCL")
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-5, atol=1e-6)
    assert BACKEND.run_kernels(model, target("aarch64", Gpu("cuda", "sm_53")), [x]) == "TVM's CUDA kernels need a CUDA device"

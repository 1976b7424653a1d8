"""GPU artifacts from IREE: CUDA (PTX checked by ptxas; run where a GPU is present) and Vulkan (run on Mesa's
lavapipe, a real Vulkan driver on the CPU)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import numpy_helper
from onnx.helper import make_node, make_tensor_value_info

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.compiler.backends.base import BackendOutput
from modelkiln.compiler.backends.iree import extract_ptx, static_check
from modelkiln.compiler.gpu_code import check_ptx
from modelkiln.compiler.verify import embedded_elf_arches
from modelkiln.errors import CompilationError
from modelkiln.runtime import ArtifactError, Model
from modelkiln.compiler.emulation import device_in_child
from modelkiln.targets import Gpu, parse_compiler_options, resolve

from ..conftest import compile_cnn, onnx_model, tar_gz

CUDA_DEVICE = device_in_child("run_iree", "cuda")


def _ptx(artifact_dir) -> str:
    with tarfile.open(artifact_dir / "model.tar.gz") as tar:
        return extract_ptx(tar.extractfile("compiled.vmfb").read())


def _meta(artifact_dir) -> dict:
    with tarfile.open(artifact_dir / "model.tar.gz") as tar:
        return json.load(tar.extractfile("compiled.meta"))


def test_ml_p3_ships_ptx_for_sm_70_checked_without_a_gpu(models, tmp_path):
    report = compile_cnn(models, tmp_path, target_device="ml_p3")
    winner = report.winner()
    assert winner.backend == "iree" and "--iree-cuda-target=sm_70" in winner.command
    ptx = _ptx(tmp_path)
    assert re.search(r"^\.target sm_70", ptx, re.M) and re.search(r"^\.version 7\.6", ptx, re.M)
    if CUDA_DEVICE:  # a real GPU: the artifact itself ran there
        assert winner.check.status == "verified" and CUDA_DEVICE in winner.check.ran_on
    else:
        assert winner.check.status == "checked: PTX + host twin"
        assert "no cuda device" in winner.check.detail and "host's CPU ran within tolerance" in winner.check.detail
        assert "assembled for sm_70 by ptxas 12.9" in winner.check.detail
    meta = _meta(tmp_path)
    assert meta["Requirements"]["TargetDeviceType"] == "gpu"
    assert meta["Requirements"]["Gpu"] == {"Api": "cuda", "Code": "sm_70", "PtxIsa": None}
    assert "Arch" not in meta["Requirements"]  # PTX + VM bytecode: any host CPU
    assert meta["Backend"]["Device"] == "cuda"
    assert any("TensorRT is not used" in n for n in winner.notes)


def test_cuda_ver_lowers_the_ptx_isa_and_trt_ver_is_recorded(models, tmp_path):
    report = compile_cnn(models, tmp_path, target_device="jetson_xavier",
                         compiler_options='{"gpu-code": "sm_72", "cuda-ver": "10.0", "trt-ver": "7.1.3"}')
    assert "--iree-cuda-target-features=+ptx63" in report.winner().command
    ptx = _ptx(tmp_path)
    assert re.search(r"^\.version 6\.3", ptx, re.M) and re.search(r"^\.target sm_72", ptx, re.M)
    assert report.winner().check.passed
    assert any("trt-ver 7.1.3" in n for n in report.notes)


def test_gpu_artifact_refuses_a_cpu_and_names_the_missing_gpu(models, tmp_path):
    compile_cnn(models, tmp_path, target_device="ml_g4dn")
    with pytest.raises(ArtifactError, match='requires device type "gpu" but user gave "cpu"'):
        Model(tmp_path / "model.tar.gz")
    if not CUDA_DEVICE:
        with pytest.raises(RuntimeError, match="cuda driver, which found no usable device"):
            Model(tmp_path / "model.tar.gz", device="gpu")


def test_ptx_static_check_rejects_the_wrong_target_a_too_new_isa_and_bad_code(models, tmp_path):
    compile_cnn(models, tmp_path, target_device="ml_p3")
    ptx = _ptx(tmp_path)
    assert "assembled for sm_70" in check_ptx(ptx, Gpu("cuda", "sm_70"), tmp_path)
    with pytest.raises(CompilationError, match="targets sm_70, not sm_75"):
        check_ptx(ptx, Gpu("cuda", "sm_75"), tmp_path)
    with pytest.raises(CompilationError, match="newer than the 6.5 that cuda-ver loads"):
        check_ptx(ptx, Gpu("cuda", "sm_70", "6.5"), tmp_path)
    broken = ptx.replace("ret;", "ret_not_an_instruction;", 1)
    with pytest.raises(CompilationError, match="ptxas rejects the PTX"):
        check_ptx(broken, Gpu("cuda", "sm_70"), tmp_path)
    with pytest.raises(CompilationError, match="holds no PTX"):
        (tmp_path / "empty.vmfb").write_bytes(b"\0" * 64)
        static_check(tmp_path, BackendOutput(files=["empty.vmfb"]),
                     resolve(parse_compiler_options(None), device="ml_p3"))


@pytest.fixture(scope="module")
def conv_net(tmp_path_factory):
    """conv + relu + global average pool + matmul + softmax: operators lavapipe runs right with the default profile."""
    d = tmp_path_factory.mktemp("vulkan")
    rng = np.random.default_rng(0)
    path = onnx_model(d / "net.onnx",
                      [make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), make_node("Relu", ["c"], ["r"]),
                       make_node("GlobalAveragePool", ["r"], ["p"]), make_node("Flatten", ["p"], ["f"]),
                       make_node("MatMul", ["f", "g"], ["m"]), make_node("Softmax", ["m"], ["y"])],
                      [make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                      [make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                      [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
                       numpy_helper.from_array(rng.standard_normal((8, 10)).astype(np.float32), "g")])
    return path, tar_gz(d / "net.tar.gz", path)


@pytest.mark.parametrize("platform_", [{"Os": "LINUX", "Arch": "ARM64", "Accelerator": "MALI"},
                                       {"Os": "LINUX", "Arch": "X86_64", "Accelerator": "INTEL_GRAPHICS"}])
def test_vulkan_artifact_runs_on_lavapipe_and_matches(conv_net, tmp_path, platform_):
    onnx_path, archive = conv_net
    report = compile_job(CompileJob(model=archive, framework="ONNX", output_dir=tmp_path, target_platform=platform_))
    winner = report.winner()
    assert "--iree-vulkan-target=vp_android_baseline_2022" in winner.command
    assert winner.check.status == "verified" and "llvmpipe" in winner.check.ran_on
    assert winner.check.max_rel_err < 1e-4
    assert _meta(tmp_path)["Requirements"]["TargetDeviceType"] == "vulkan"
    # Run as a user would, in a fresh process: lavapipe brings its own LLVM, which can crash in a process that
    # already holds other LLVM-based libraries (this test worker's), so Kiln's own checks run it in a child too.
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-m", "modelkiln.cli", "run", str(tmp_path / "model.tar.gz"), "--device", "vulkan",
                    "--input", str(tmp_path / "x.npy"), "--output-dir", str(tmp_path / "out")], check=True)
    expected = ort.InferenceSession(str(onnx_path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), expected, rtol=1e-4, atol=1e-6)


def test_vulkan_code_lavapipe_computes_wrong_is_rejected_naming_another_gpu_code(models, tmp_path):
    # The small CNN's depthwise convolution: IREE's default-profile SPIR-V gives wrong results on lavapipe.
    with pytest.raises(CompilationError) as err:
        compile_cnn(models, tmp_path, target_platform={"Os": "ANDROID", "Arch": "ARM64", "Accelerator": "MALI"})
    assert "on llvmpipe" in err.value.message and "gpu-code 'valhall'" in err.value.message
    assert not (tmp_path / "model.tar.gz").exists()


def test_tree_models_on_a_gpu_target_name_the_cpu_route(tmp_path):
    from sklearn.ensemble import RandomForestRegressor
    import joblib

    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x, y = rng.random((50, 4)), rng.random(50)
    for estimator, what in [(RandomForestRegressor(n_estimators=3, max_depth=3, random_state=0), "tree ensembles"),
                            (LinearRegression(), "ONNX-ML operators")]:
        joblib.dump(estimator.fit(x, y), tmp_path / "model.joblib")
        with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "model.joblib", arcname="model.joblib")
        job = CompileJob(model=tmp_path / "m.tar.gz", framework="SKLEARN", output_dir=tmp_path / "out",
                         target_device="ml_g4dn")
        with pytest.raises(CompilationError, match=f"{what} .* are compiled for CPUs only") as err:
            compile_job(job)
        assert err.value.stage == "target" and "without Accelerator" in err.value.hint


@pytest.mark.parametrize("device, host_elf", [("rk3399", "aarch64"), ("rk3288", "arm")])
def test_midgard_mali_ships_opencl_whose_kernels_run_on_pocl(models, tmp_path, device, host_elf):
    report = compile_cnn(models, tmp_path, target_device=device)
    winner = report.winner()
    assert winner.backend == "tvm" and winner.check.status == "checked: PoCL kernels + host twin"
    assert "kernels built by Portable Computing Language" in winner.check.detail
    assert "its kernels ran on PoCL" in winner.check.detail and "and matched" in winner.check.detail
    meta = _meta(tmp_path)
    assert meta["Requirements"]["TargetDeviceType"] == "opencl" and meta["Backend"]["Device"] == "opencl"
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        library = tar.extractfile("compiled.so").read()
    assert (host_elf, 2 if host_elf == "aarch64" else 1) in embedded_elf_arches(library)


def test_old_nvidia_gpus_get_ptx_from_tvm_with_the_board_cpu_as_host(models, tmp_path):
    report = compile_cnn(models, tmp_path, target_device="jetson_nano")
    iree, tvm = report.candidates
    assert iree.status == "skipped" and "starts at sm_60" in iree.reason
    assert tvm.status == "selected" and tvm.check.status == ("verified" if CUDA_DEVICE else "checked: PTX + host twin")
    if not CUDA_DEVICE:
        assert "PTX .version 4.2 .target sm_53, assembled for sm_53 by ptxas 12.9" in tvm.check.detail
        assert "kernels were not run (TVM's CUDA kernels need a CUDA device)" in tvm.check.detail
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        library = tar.extractfile("compiled.so").read()
    assert embedded_elf_arches(library) == {("aarch64", 2)}  # host code for the Jetson's CPU


def test_a_model_no_gpu_compiler_takes_names_the_cpu_route(tmp_path):
    path = onnx_model(tmp_path / "u.onnx",
                      [make_node("Relu", ["x"], ["r"], name="relu1"), make_node("Unique", ["r"], ["y"], name="dedupe")],
                      [make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                      [make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    with pytest.raises(CompilationError) as err:
        compile_job(CompileJob(model=tar_gz(tmp_path / "m.tar.gz", path), framework="ONNX",
                               output_dir=tmp_path / "out",
                               target_platform={"Os": "ANDROID", "Arch": "ARM64", "Accelerator": "MALI"}))
    assert "'Unique'" in err.value.message and "'dedupe'" in err.value.message
    assert "no vulkan compiler here takes this model" in err.value.hint and "without Accelerator" in err.value.hint

"""Real compiles of small real models for x86-64, aarch64 (checked under qemu-user) and armv7."""
from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx.helper import make_node, make_tensor_value_info

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.compiler.report import render_text
from modelkiln.errors import CompilationError, ValidationError
from modelkiln.runtime import Model

from ..conftest import compile_cnn, onnx_model, tar_gz


def test_x86_compiles_every_backend_verifies_and_ships_the_fastest(x86_artifact):
    report, out = x86_artifact
    by_name = {c.backend: c for c in report.candidates}
    assert set(by_name) == {"onnxruntime", "openvino", "iree"}
    for cand in report.candidates:
        assert cand.check is not None and cand.check.status == "verified", cand
        assert cand.check.ran_on == "host (x86_64)"
        assert cand.check.max_rel_err <= cand.check.tolerance
        assert cand.latency_ms > 0 and cand.size_bytes > 0
    # OpenVINO's report says what its plugin ran here: the float32 CNN's three convolutions and its Gemm in f32
    (ran,) = [n for n in by_name["openvino"].notes if n.startswith("on this host OpenVINO's CPU plugin ran")]
    assert "Convolution in f32 with" in ran and "FullyConnected in f32 with" in ran, ran
    winner = report.winner()
    assert winner.status == "selected"
    assert winner.latency_ms == min(c.latency_ms for c in report.candidates)
    assert "fastest" in report.selection


def test_artifact_layout_meta_and_report(x86_artifact):
    report, out = x86_artifact
    with tarfile.open(out / "model.tar.gz") as tar:
        names = set(tar.getnames())
        meta = json.load(tar.extractfile("compiled.meta"))
        inner_report = json.load(tar.extractfile("report.json"))
    assert {"compiled.meta", "report.json"} <= names
    assert set(meta["Backend"]["Files"]) <= names
    assert all(n.startswith("compiled.") or n == "report.json" for n in names)
    assert meta["Requirements"] == {**meta["Requirements"], "TargetDevice": "ml_c5", "TargetDeviceType": "cpu",
                                     "Arch": "x86_64"}
    assert meta["Model"]["Inputs"] == [{"name": "data", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert meta["Model"]["Outputs"][0]["shape"] == [1, 10]
    assert meta["Backend"]["Name"] == report.selected
    assert inner_report["selected"] == report.selected
    assert "seed" in inner_report["check_inputs"]
    assert len(inner_report["candidates"]) == 3
    outer = json.loads((out / "report.json").read_text())
    assert outer["artifact_sha256"] == report.artifact_sha256


def test_aarch64_runs_under_qemu_and_matches(aarch64_artifact):
    report, out = aarch64_artifact
    assert report.target["arch"] == "aarch64" and report.target["mcpu"] == "cortex-a72"
    assert "+neon" in report.target["mattr"]
    winner = report.winner()
    assert winner.backend == "onnxruntime"  # the catalog's first choice for aarch64
    assert winner.check.status == "verified"
    assert "qemu" in winner.check.ran_on and "aarch64" in winner.check.ran_on
    assert winner.check.max_rel_err <= 1e-3
    assert winner.latency_ms is None  # never timed under emulation
    assert "mcpu cortex-a72 does not change this artifact" in winner.notes[0]
    assert [c.status for c in report.candidates[1:]] == ["not tried", "not tried"]


@pytest.mark.parametrize("target, triple", [
    ({"target_device": "rasp3b"}, "armv7a-linux-gnueabihf"),
    # ARMv7 cores (not ARMv8 in 32-bit mode, like the Pi 3's A53) call fmaxf for ReLU/Clip/MaxPool: Kiln links it in
    ({"target_device": "sitara_am57x"}, "armv7a-linux-gnueabihf"),
    ({"target_platform": {"Os": "LINUX", "Arch": "ARM_EABIHF"}}, "armv7a-linux-gnueabihf"),
    ({"target_platform": {"Os": "ANDROID", "Arch": "ARM_EABI"}}, "armv7a-linux-androideabi21"),
])
def test_armv7_is_not_run_and_says_what_was_checked(models, tmp_path, target, triple):
    report = compile_cnn(models, tmp_path, **target)
    winner = report.winner()
    assert winner.backend == "iree"
    assert winner.check.status == "checked: host twin"
    assert "checked instead" in winner.check.detail and "arm ELF32" in winner.check.detail
    assert "debug-symbols=false" in winner.command and f"--iree-llvmcpu-target-triple={triple}" in winner.command
    saved = json.loads((tmp_path / "report.json").read_text())
    assert "verified" not in json.dumps(saved["candidates"][0]["check"]) and saved["verified"] is False
    assert "Verified  no: checked: host twin" in render_text(report)


def test_require_run_fails_a_job_whose_artifact_could_only_be_checked(models, tmp_path):
    with pytest.raises(CompilationError) as err:
        compile_cnn(models, tmp_path / "armv7", target_device="rasp3b", compiler_options='{"kiln-require-run": true}')
    assert "could run on its target's architecture" in err.value.message and "checked: host twin" in err.value.message
    assert "drop kiln-require-run" in err.value.hint
    report = compile_cnn(models, tmp_path / "a72", target_device="rasp4b",
                         compiler_options='{"kiln-require-run": true, "kiln-backend": "onnxruntime"}')
    assert report.verified and "qemu" in report.winner().check.ran_on
    assert "Verified  yes: the artifact ran on qemu-user" in render_text(report)


def test_target_platform_and_pinned_backend(models, tmp_path):
    report = compile_cnn(models, tmp_path, target_platform={"Os": "LINUX", "Arch": "ARM64"},
                         compiler_options='{"kiln-backend": "onnxruntime"}')
    assert [c.backend for c in report.candidates] == ["onnxruntime"]
    assert report.selection == "pinned by CompilerOptions kiln-backend"
    check = report.winner().check  # run by the aarch64 onnxruntime, in an arm64 Python under qemu-user
    assert check.status == "verified" and "qemu" in check.ran_on and "onnxruntime" in check.ran_on


def test_pinned_backend_on_x86(models, tmp_path):
    report = compile_cnn(models, tmp_path, target_device="ml_c5", compiler_options="{'kiln-backend': 'iree'}")
    assert report.selected == "iree" and len(report.candidates) == 1
    assert Model(tmp_path / "model.tar.gz").backend == "iree"


def test_windows_x64_ships_os_independent_bytes_checked_here(models, tmp_path):
    report = compile_cnn(models, tmp_path, target_device="x86_win64", compiler_options="{'kiln-backend': 'iree'}")
    assert report.winner().check.status == "verified"  # the same bytes, on this Linux host
    assert any("Windows x64" in note and "do not depend on the OS" in note for note in report.notes)
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        meta = json.load(tar.extractfile("compiled.meta"))
    assert meta["Requirements"]["TargetDevice"] == "x86_win64"
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert Model(tmp_path / "model.tar.gz").run(x)[0].shape == (1, 10)


def test_android_arm64_is_built_for_the_android_triple_and_run_under_qemu(models, tmp_path):
    report = compile_cnn(models, tmp_path, target_platform={"Os": "ANDROID", "Arch": "ARM64"},
                         compiler_options='{"ANDROID_PLATFORM": 29}')
    winner = report.winner()
    assert winner.backend == "iree" and "--iree-llvmcpu-target-triple=aarch64-linux-android29" in winner.command
    assert winner.check.status == "verified" and "qemu" in winner.check.ran_on  # the same bytes, Linux runtime
    assert report.target["triple"] == "aarch64-linux-android29"
    assert any("Android NDK" in note for note in report.notes)


def test_android_x86_64_is_checked_natively(models, tmp_path):
    x86 = compile_cnn(models, tmp_path / "x86", target_platform={"Os": "ANDROID", "Arch": "X86_64"})
    assert {c.backend: c.status for c in x86.candidates}.keys() == {"iree", "onnxruntime"}
    iree = next(c for c in x86.candidates if c.backend == "iree")
    assert "--iree-llvmcpu-target-triple=x86_64-linux-android21" in iree.command
    assert iree.check.status == "verified" and x86.winner().check.status == "verified"  # natively, same bytes


@pytest.mark.parametrize("target", [{"target_device": "x86_win32"},
                                    {"target_platform": {"Os": "LINUX", "Arch": "X86"}}])
def test_i686_is_built_and_checked_by_a_host_twin(models, tmp_path, target):
    report = compile_cnn(models, tmp_path, **target)
    winner = report.winner()
    assert winner.backend == "iree" and "--iree-llvmcpu-target-triple=i686-linux-gnu" in winner.command
    assert winner.check.status == "checked: host twin"
    assert "i686 module's kernels were checked to be x86 ELF32 code" in winner.check.detail


def test_iree_on_aarch64_honours_mcpu_and_runs_under_qemu(models, tmp_path):
    report = compile_cnn(models, tmp_path, target_device="rasp4b",
                         compiler_options='{"mcpu": "cortex-a53", "mattr": ["+crc"], "kiln-backend": "iree"}')
    winner = report.winner()
    assert "--iree-llvmcpu-target-cpu=cortex-a53" in winner.command
    assert "--iree-llvmcpu-target-triple=aarch64-linux-gnu" in winner.command
    assert winner.check.status == "verified" and "iree-run-module for aarch64" in winner.check.ran_on
    assert winner.check.max_rel_err <= 1e-3


def test_pytorch_list_form_and_dict_form_multi_io(models, tmp_path):
    job = CompileJob(model=models / "two_pth.tar.gz", framework="PYTORCH", output_dir=tmp_path / "a",
                     data_input_config="[[2, 8], [2, 5]]", target_device="ml_c5",
                     compiler_options='{"kiln-backend": "onnxruntime"}')
    report = compile_job(job)
    assert [i["name"] for i in report.inputs] == ["input0", "input1"]
    assert len(report.outputs) == 2
    job.data_input_config, job.output_dir = '{"x": [2, 8], "y": [2, 5]}', tmp_path / "b"
    report = compile_job(job)
    assert [i["name"] for i in report.inputs] == ["x", "y"]
    model = Model(tmp_path / "b" / "model.tar.gz")
    module = torch.jit.load(str(models / "two.pth"))
    x, y = np.ones((2, 8), np.float32), np.full((2, 5), 0.5, np.float32)
    expected = [t.detach().numpy() for t in module(torch.from_numpy(x), torch.from_numpy(y))]
    for got, want in zip(model.run({"y": y, "x": x}), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_int64_inputs_are_sampled_as_valid_indices(tmp_path):
    """An embedding lookup: random int inputs must stay inside the vocabulary."""
    table = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "table")
    path = onnx_model(tmp_path / "emb.onnx", [make_node("Gather", ["table", "ids"], ["out"], name="lookup")],
                      [make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
                      [make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 4])], [table])
    report = compile_job(CompileJob(model=tar_gz(tmp_path / "m.tar.gz", path), framework="ONNX",
                                    output_dir=tmp_path / "out", target_device="ml_c5"))
    assert report.inputs == [{"name": "ids", "shape": [1, 6], "dtype": "int64"}]
    assert all(c.status in ("selected", "passed") for c in report.candidates)


def test_operator_iree_cannot_convert_is_named_and_another_backend_ships(tmp_path):
    path = onnx_model(tmp_path / "u.onnx",
                      [make_node("Relu", ["x"], ["r"], name="relu1"), make_node("Unique", ["r"], ["y"], name="dedupe")],
                      [make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                      [make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    archive = tar_gz(tmp_path / "m.tar.gz", path)
    report = compile_job(CompileJob(model=archive, framework="ONNX", output_dir=tmp_path / "a", target_device="ml_c5"))
    iree = next(c for c in report.candidates if c.backend == "iree")
    assert iree.status == "failed"
    assert "'Unique'" in iree.reason and "'dedupe'" in iree.reason
    assert report.selected in ("onnxruntime", "openvino")
    with pytest.raises(CompilationError) as err:  # pinned to IREE, nothing else may ship
        compile_job(CompileJob(model=archive, framework="ONNX", output_dir=tmp_path / "b",
                               target_device="rasp4b", compiler_options='{"kiln-backend": "iree"}'))
    assert err.value.stage == "verify" and "'Unique'" in err.value.message and err.value.hint
    assert not (tmp_path / "b" / "model.tar.gz").exists()


def test_unsupported_framework_and_target_are_validation_errors(models, tmp_path):
    with pytest.raises(ValidationError) as err:
        compile_job(CompileJob(model=models / "cnn_onnx.tar.gz", framework="CAFFE", output_dir=tmp_path,
                               target_device="ml_c5"))
    assert err.value.field == "InputConfig.Framework"
    with pytest.raises(ValidationError) as err:
        compile_cnn(models, tmp_path, target_device="ml_inf1")
    assert err.value.field == "OutputConfig.TargetDevice" and "Neuron" in err.value.message
    assert not (tmp_path / "model.tar.gz").exists()


def test_reduced_precision_is_judged_by_accuracy_and_skips_backends_that_cannot(models, tmp_path):
    # bf16 is made from no sample, so all 32 drawn samples judge it: top-1 agreement of at most 0.92 can be shown
    report = compile_cnn(models, tmp_path, target_device="ml_c5",
                         compiler_options='{"kiln-precision": "bfloat16", "kiln-accuracy": {"top1_agreement": 0.7}}')
    by_name = {c.backend: c for c in report.candidates}
    assert by_name["onnxruntime"].status == "skipped" and "bfloat16" in by_name["onnxruntime"].reason
    # ml_c5's Skylake has no bf16 instructions: OpenVINO's hint would compute in float32
    assert by_name["openvino"].status == "skipped" and "no bfloat16 instructions" in by_name["openvino"].reason
    accuracy = by_name["iree"].check.accuracy  # judged by the 95% lower bound of top-1
    assert accuracy.met and accuracy.budgets == ["output 0: top1_agreement >= 0.7 (at 95% confidence)"]
    assert accuracy.samples == 32 and accuracy.top1_decisions == (32, 32)
    assert "demote-contraction-inputs-type=bf16" in by_name["iree"].command
    # the report says what ran in bf16: the head's Gemm; the three convolutions stayed fp32
    assert ("IREE demotes the inputs of the model's 1 MatMul/Gemm operator(s) to bfloat16, accumulating in fp32; "
            "other operators stay fp32; its 3 convolution(s) stay fp32") in " ".join(by_name["iree"].notes)
    assert report.selected == "iree-bfloat16"
    assert json.loads((tmp_path / "report.json").read_text())["candidates"][0]["status"] == "skipped"


def test_iree_reduced_precision_of_a_model_without_matmuls_fails_naming_why(tmp_path):
    # IREE demotes no convolution: its bf16 of a convolution-only model would be fp32 under another name
    weight = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    path = onnx_model(tmp_path / "m.onnx", [make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                      [make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    with pytest.raises(CompilationError) as err:
        compile_job(CompileJob(model=path, framework="ONNX", output_dir=tmp_path / "out", target_device="ml_c5",
                               compiler_options='{"kiln-backend": "iree", "kiln-precision": "bfloat16"}'))
    assert "IREE would compute nothing of this model in bfloat16" in err.value.message
    assert "its 1 convolution(s) stay fp32" in err.value.message and "kiln-backend openvino" in err.value.message
    assert not (tmp_path / "out" / "model.tar.gz").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_artifact_is_written_with_the_users_umask(tmp_path, umask):
    path = onnx_model(tmp_path / "m.onnx", [make_node("Relu", ["x"], ["y"])],
                      [make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                      [make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    old = os.umask(umask)
    try:
        compile_job(CompileJob(model=path, framework="ONNX", output_dir=tmp_path / "out", target_device="ml_c5",
                               compiler_options='{"kiln-backend": "onnxruntime"}'))
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "model.tar.gz").stat().st_mode & 0o777 == 0o666 & ~umask


def test_forward_args_are_refused_for_frameworks_without_forward(tmp_path):
    with pytest.raises(ValidationError) as err:
        compile_job(CompileJob(model=tmp_path / "m.onnx", framework="ONNX", output_dir=tmp_path / "out",
                               target_device="ml_c5", compiler_options='{"kiln-forward-args": {"sr": 16000}}'))
    assert err.value.field == "OutputConfig.CompilerOptions.kiln-forward-args" and "ONNX" in err.value.message

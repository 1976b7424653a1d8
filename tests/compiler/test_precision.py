"""Precision search: int8 / bf16 candidates calibrated on data, judged on held-out samples by an accuracy budget,
and the fastest within the budget shipped; real compiles of the small CNN."""
from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.compiler.accuracy import classifier_like, measure
from modelkiln.compiler.calibration import CALIBRATION_MAX, samples_for_evaluation, split
from modelkiln.compiler.report import render_text
from modelkiln.compiler.routes import native_precisions
from modelkiln.errors import CompilationError, ValidationError
from modelkiln.runtime import Model
from modelkiln.targets import parse_compiler_options, resolve
from modelkiln.targets.options import AccuracyBudget

from ..conftest import CNN_SHAPE

SAMPLES = 40


def test_top1_agreement_and_cosine_against_the_source():
    references = [[np.array([[0.1, 0.9, 0.0]], np.float32)], [np.array([[0.8, 0.1, 0.1]], np.float32)]]
    flipped = [[np.array([[0.1, 0.9, 0.0]], np.float32)], [np.array([[0.1, 0.8, 0.1]], np.float32)]]
    assert classifier_like(references[0][0]) and not classifier_like(np.zeros((1, 3, 8, 8), np.float32))
    embedding = np.random.default_rng(0).standard_normal((2, 384)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)  # L2-normalized, as sentence encoders give it
    assert not classifier_like(embedding) and classifier_like(3 * embedding)  # logits of any norm are scores
    assert classifier_like(np.array([[0.9999, 0.0001, 0.0]], np.float32))  # a confident softmax: no negatives
    same = measure(references, references, None, "test")
    assert same.top1_agreement == 1.0 and same.cosine == pytest.approx(1.0)
    assert not same.met and "give at least 268 evaluation samples (a calibration.npz of 524 samples" in same.describe()
    many = measure(references * 134, references * 134, None, "test")  # 268 of 268 agree: 0.99 is shown
    assert many.met and many.top1_decisions == (268, 268) and many.top1_lower_bound >= 0.99
    assert measure(references * 16, references * 16, AccuracyBudget("top1_agreement", 0.85), "test").met
    one_off = measure(references * 133 + flipped[1:], references * 134, None, "test")  # 267 of 268
    assert not one_off.met and "267/268" in one_off.describe() and "give at least" not in one_off.describe()
    assert many.margin == 0.0 and one_off.margin == pytest.approx(-1 / 268)  # a decision short of the bound
    half = measure(flipped, references, None, "test")  # the default budget of a classifier: top-1 >= 0.99
    assert not half.met and half.top1_agreement == 0.5 and "top1_agreement >= 0.99" in half.describe()
    loose = measure(flipped, references, AccuracyBudget("cosine", 0.25), "test")  # worst sample: 0.258
    assert loose.met and loose.margin == pytest.approx(loose.cosine - 0.25) and loose.margin > 0
    maps = [[np.ones((1, 4, 2, 2), np.float32)]]  # not a classifier: cosine, even when top-1 was asked for
    scaled = measure([[2 * maps[0][0]]], maps, AccuracyBudget("top1_agreement", 0.99), "test")
    assert scaled.met and scaled.top1_agreement is None and scaled.budgets == ["output 0: cosine >= 0.999"]


def test_up_to_256_samples_calibrate_spread_over_the_file_and_every_other_one_is_held_out():
    assert [len(part) for part in split(40)] == [30, 10]  # one in four held out
    calibrating, evaluating = split(1072)
    assert (len(calibrating), len(evaluating)) == (CALIBRATION_MAX, 816)  # 0.99 top-1 can then be shown
    classes = np.repeat(np.arange(8), 134)  # a file sorted by class: each class calibrates and evaluates
    assert set(classes[calibrating]) == set(classes[evaluating]) == set(range(8))
    assert len(split(samples_for_evaluation(268))[1]) == 268 and len(split(samples_for_evaluation(52))[1]) == 52


def test_auto_tries_bf16_only_where_the_target_cpu_computes_it():
    assert native_precisions(resolve(parse_compiler_options(None), "ml_c5", None)) == ["float32", "int8"]
    znver4 = resolve(parse_compiler_options('{"mcpu": "znver4"}'), "ml_c5", None)
    assert native_precisions(znver4) == ["float32", "int8", "bfloat16"]


@pytest.fixture(scope="module")
def calibrated(models, tmp_path_factory) -> Path:
    """The small CNN's ONNX with a calibration.npz of SAMPLES inputs in the archive (sample axis = batch axis)."""
    data = np.random.default_rng(7).standard_normal((SAMPLES, *CNN_SHAPE[1:])).astype(np.float32)
    return with_calibration(models / "cnn.onnx", {"data": data}, tmp_path_factory.mktemp("calibrated"))


def with_calibration(model: Path, samples: dict[str, np.ndarray], folder: Path) -> Path:
    """folder/model.tar.gz: the ONNX file and a calibration.npz of samples (input name -> [N, ...])."""
    npz = io.BytesIO()
    np.savez(npz, **samples)
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model, model.name)
        info = tarfile.TarInfo("calibration.npz")
        info.size = len(npz.getvalue())
        tar.addfile(info, io.BytesIO(npz.getvalue()))
    return archive


def _compile(model: Path, out: Path, options: str, **kwargs):
    return compile_job(CompileJob(model=model, framework="ONNX", output_dir=out, target_device="ml_c5",
                                  data_input_config='{"data": [1, 3, 32, 32]}', compiler_options=options, **kwargs))


def test_auto_measures_every_precision_on_held_out_samples_and_ships_the_fastest_within_budget(calibrated, tmp_path):
    report = _compile(calibrated, tmp_path, '{"kiln-precision": "auto", "kiln-accuracy": {"cosine": 0.98}}')
    by_key = {c.key: c for c in report.candidates}
    assert {"onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8", "iree"} <= set(by_key)
    assert "iree-int8" not in by_key  # IREE does not quantize: not a candidate of auto
    for key in ("onnxruntime-int8", "openvino-int8"):
        cand = by_key[key]
        assert cand.check.accuracy is not None and cand.check.accuracy.samples == SAMPLES // 4
        assert cand.check.accuracy.met == (cand.check.accuracy.cosine >= 0.98) == (cand.status != "rejected")
    assert "quantize_static" in by_key["onnxruntime-int8"].command
    assert "nncf.quantize(" in by_key["openvino-int8"].command  # within budget: no accuracy control needed
    assert "preset=MIXED" not in by_key["openvino-int8"].command  # ReLUs: symmetric activation ranges suffice
    assert report.precision == {"asked": "auto", "budget": "cosine >= 0.98", "data": f"calibration.npz: {SAMPLES} samples",
                                "calibration_samples": 30, "evaluation_samples": 10, "synthetic": False}
    passed = [c for c in report.candidates if c.status in ("passed", "selected")]
    winner = report.winner()
    assert winner.key == report.selected and winner.latency_ms == min(c.latency_ms for c in passed)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["selected"] == winner.key and {c["name"] for c in saved["candidates"]} == set(by_key)
    assert "Precision auto: accuracy measured on calibration.npz: 40 samples" in render_text(report)
    # the shipped artifact runs as it is, whatever its precision, and stays within the budget
    model = Model(tmp_path / "model.tar.gz")
    x = np.random.default_rng(1).standard_normal(CNN_SHAPE).astype(np.float32)
    assert model.meta["Precision"] == winner.precision
    assert np.asarray(model.run({"data": x})[0]).shape == (1, 10)


def test_bf16_which_no_sample_went_into_is_judged_on_every_sample(calibrated, tmp_path):
    report = _compile(calibrated, tmp_path, '{"kiln-precision": "bfloat16", "kiln-backend": "openvino", '
                                            '"mcpu": "znver4", "kiln-accuracy": {"cosine": 0.9}}')
    assert report.winner().check.accuracy.samples == SAMPLES  # int8's calibration samples are unseen by bf16
    # the report says in which precision the plugin ran the convolutions here: bf16 where this CPU computes it
    flags = Path("/proc/cpuinfo").read_text().split()
    computed = "bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "f32"
    (ran,) = [n for n in report.winner().notes if n.startswith("on this host OpenVINO's CPU plugin ran")]
    assert re.search(rf"\d+ Convolution in {computed} with \w+", ran), ran


def test_int8_float_layers_run_in_bf16_only_where_timed_faster_and_within_budget(calibrated, tmp_path):
    report = _compile(calibrated, tmp_path, '{"kiln-precision": "int8", "kiln-backend": "openvino", '
                                            '"mcpu": "znver4", "kiln-accuracy": {"cosine": 0.9}}')
    winner = report.winner()
    (note,) = [n for n in winner.notes if "float layers run in" in n]
    bf16_ms, f32_ms = (float(v) for v in re.search(r"([\d.]+) ms with them in bf16 against ([\d.]+) ms", note).groups())
    (ran,) = [n for n in winner.notes if n.startswith("on this host OpenVINO's CPU plugin ran")]
    assert re.search(r"\d+ Convolution in [ui]8 with \w+", ran), ran  # the quantized convolutions ran in int8
    model = Model(tmp_path / "model.tar.gz")
    hint = model._executor._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    if "run in bf16" in note:  # what the note says ran is what the artifact runs, and what the verdict measured
        assert bf16_ms < f32_ms and model.meta["Backend"]["Config"] == {"INFERENCE_PRECISION_HINT": "bf16"}
        assert hint == "bf16"
    else:
        assert "Config" not in model.meta["Backend"] and hint == "f32"
    assert winner.check.accuracy.met


def test_int8_for_a_cpu_without_bf16_keeps_its_float_layers_in_f32(calibrated, tmp_path):
    report = _compile(calibrated, tmp_path, '{"kiln-precision": "int8", "kiln-backend": "openvino", '
                                            '"kiln-accuracy": {"cosine": 0.9}}')  # ml_c5: Skylake, no bf16
    assert not any("float layers" in n for n in report.winner().notes)
    assert "Config" not in Model(tmp_path / "model.tar.gz").meta["Backend"]


def test_accuracy_control_is_not_tried_where_the_samples_cannot_show_the_budget(calibrated, tmp_path):
    report = _compile(calibrated, tmp_path, '{"kiln-precision": "auto", "kiln-backend": "openvino"}')
    int8 = next(c for c in report.candidates if c.key == "openvino-int8")  # default budget: top-1 >= 0.99
    assert int8.status == "rejected" and "accuracy control cannot help: 10 decisions cannot show" in int8.command
    assert "(a calibration.npz of 524 samples" in int8.command


def test_openvino_int8_over_budget_gives_layers_back_to_float32_until_it_holds(calibrated, tmp_path):
    report = _compile(calibrated, tmp_path, '{"kiln-precision": "int8", "kiln-backend": "openvino", '
                                            '"kiln-accuracy": {"max_rel_err": 1e-4}}')
    winner = report.winner()
    assert "quantize_with_accuracy_control" in winner.command and "max_rel_err <= 0.0001" in winner.command
    assert winner.check.accuracy.met and winner.check.accuracy.max_rel_err <= 1e-4


def test_int8_over_its_budget_fails_naming_the_figures_and_the_fix(calibrated, tmp_path):
    with pytest.raises(CompilationError) as caught:
        _compile(calibrated, tmp_path, '{"kiln-precision": "int8", "kiln-accuracy": {"max_rel_err": 1e-9}}')
    assert "over the accuracy budget" in caught.value.message and "max_rel_err <= 1e-09: NOT met" in caught.value.message
    assert "relax kiln-accuracy" in caught.value.hint and not (tmp_path / "model.tar.gz").exists()


def test_without_data_the_figures_are_said_to_be_synthetic(models, tmp_path):
    report = _compile(models / "cnn_onnx.tar.gz", tmp_path,
                      '{"kiln-precision": "int8", "kiln-backend": "onnxruntime", "kiln-accuracy": {"cosine": 0.5}}')
    assert report.selected == "onnxruntime-int8" and report.precision["synthetic"] is True
    assert "synthetic data" in report.winner().check.accuracy.data


def test_kiln_calibration_needs_the_file_with_kiln_compile(models, tmp_path):
    with pytest.raises(ValidationError) as caught:
        _compile(models / "cnn_onnx.tar.gz", tmp_path, '{"kiln-precision": "int8", "kiln-calibration": "s3://b/c.npz"}')
    assert caught.value.field == "OutputConfig.CompilerOptions.kiln-calibration" and "--calibration" in caught.value.message


def test_int8_for_an_arm_board_is_measured_under_qemu(calibrated, tmp_path):
    report = compile_job(CompileJob(model=calibrated, framework="ONNX", output_dir=tmp_path, target_device="rasp4b",
                                    data_input_config='{"data": [1, 3, 32, 32]}', compiler_options=json.dumps(
                                        {"kiln-precision": "int8", "kiln-backend": "onnxruntime",
                                         "kiln-accuracy": {"cosine": 0.95}})))
    winner = report.winner()
    assert report.selected == "onnxruntime-int8" and report.verified
    assert "qemu" in winner.check.ran_on and winner.check.accuracy.samples == SAMPLES // 4


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A small BERT encoder (random weights) whose calibration samples are narrower than its evaluation ones: the
    calibrating three in four hold token ids 0-1 only, the held-out ones any id. Static int8 ranges then miss the
    inputs it meets; activations quantized at run time need no ranges."""
    import torch
    from transformers import BertConfig, BertModel

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(BertConfig(vocab_size=200, hidden_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=512, max_position_embeddings=64))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids).last_hidden_state

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("encoder")
    torch.onnx.export(Encoder().eval(), (torch.zeros(1, 32, dtype=torch.long),), str(folder / "encoder.onnx"),
                      input_names=["ids"], output_names=["hidden"], opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    calibrating, _ = split(SAMPLES)
    ids = np.stack([rng.integers(0, 2 if i in calibrating else 200, (1, 32)) for i in range(SAMPLES)])
    return with_calibration(folder / "encoder.onnx", {"ids": ids}, folder)


def test_a_transformer_whose_static_int8_misses_gets_int8_weights_with_activations_quantized_at_run_time(
        encoder, tmp_path):
    report = compile_job(CompileJob(model=encoder, framework="ONNX", output_dir=tmp_path, target_device="ml_c5",
                                    data_input_config='{"ids": [1, 32]}', compiler_options=json.dumps(
                                        {"kiln-precision": "int8", "kiln-backend": "openvino",
                                         "kiln-accuracy": {"cosine": 0.99998}})))
    winner = report.winner()
    assert "missed cosine >= 0.99998" in winner.command and "nncf.compress_weights(" in winner.command
    assert "DYNAMIC_QUANTIZATION_GROUP_SIZE=128" in winner.command  # the largest group that meets the budget
    assert winner.check.accuracy.met and winner.check.accuracy.cosine >= 0.99998
    assert winner.check.accuracy.samples == SAMPLES  # no sample went into it: the calibrating ones judge it too
    model = Model(tmp_path / "model.tar.gz")
    assert model.meta["Backend"]["Config"] == {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}
    assert model._executor._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 128  # the runtime applies it
    assert model.meta["Requirements"]["Runtime"] == {"openvino": ">=2024.1"}
    assert any("quantizes each MatMul's activations to int8 at run time, in groups of 128" in n for n in winner.notes)


def test_a_cnn_whose_activations_go_negative_gets_asymmetric_activation_ranges(tmp_path):
    """SiLU (Swish) and HardSwish outputs dip below zero: NNCF's MIXED preset, as its docs advise for them."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 16, 3),
                              torch.nn.Hardswish(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(16, 10)).eval()
    torch.onnx.export(net, (torch.zeros(CNN_SHAPE),), str(tmp_path / "swish.onnx"), input_names=["data"],
                      output_names=["scores"], opset_version=17, dynamo=False)
    data = np.random.default_rng(5).standard_normal((SAMPLES, *CNN_SHAPE[1:])).astype(np.float32)
    archive = with_calibration(tmp_path / "swish.onnx", {"data": data}, tmp_path)
    report = _compile(archive, tmp_path / "out", '{"kiln-precision": "int8", "kiln-backend": "openvino", '
                                                 '"kiln-accuracy": {"cosine": 0.9}}')
    assert "nncf.quantize(" in report.winner().command and "preset=MIXED" in report.winner().command
    assert report.winner().check.accuracy.met

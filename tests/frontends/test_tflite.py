"""The TFLite frontend: float and int8-quantized .tflite in, compiled for real and checked against the
LiteRT interpreter; typed errors otherwise."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from modelkiln.compiler import CompileJob, compile_job  # noqa: E402
from modelkiln.errors import CompilationError, ValidationError  # noqa: E402
from modelkiln.frontends.tflite import load  # noqa: E402
from modelkiln.runtime import Model  # noqa: E402

from ..conftest import tar_gz  # noqa: E402
from .test_keras import HWC, keras_cnn  # noqa: E402

ORT = '{"kiln-backend": "onnxruntime"}'
INPUT = "serving_default_image"


def tflite_bytes(model, quantize: str | None = None) -> bytes:
    """The model as TFLite: float, int8 weights/activations with float I/O ("int8"), or int8 I/O too."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.standard_normal((1, *HWC)).astype(np.float32)]
                                                    for _ in range(16))
    if quantize == "int8-io":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": the converter's own
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()


@pytest.fixture(scope="module")
def litemodels(tmp_path_factory) -> Path:
    """float/, int8/ (float I/O), int8io/ (int8 I/O): each a folder with model.tflite and a tarball."""
    d = tmp_path_factory.mktemp("tflite")
    cnn = keras_cnn()
    for name, quantize in (("float", None), ("int8", "int8"), ("int8io", "int8-io")):
        (d / name).mkdir()
        (d / name / "model.tflite").write_bytes(tflite_bytes(cnn, quantize))
        tar_gz(d / f"{name}.tar.gz", d / name / "model.tflite")
    return d


def interpret(path: Path, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def compile_lite(tar: Path, out: Path, config: str | None = None, **kwargs):
    return compile_job(CompileJob(model=tar, framework="TFLITE", output_dir=out, data_input_config=config,
                                  **{"target_device": "ml_c5", "compiler_options": ORT, **kwargs}))


def sample(seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, *HWC)).astype(np.float32)


def test_float_model_compiles_without_config_and_matches_litert(litemodels, tmp_path):
    report = compile_lite(litemodels / "float.tar.gz", tmp_path)
    check = report.winner().check
    assert check.status == "verified" and check.max_rel_err <= 1e-3
    assert report.inputs == [{"name": INPUT, "shape": [1, 16, 16, 3], "dtype": "float32"}]
    assert report.framework == "TFLITE" and report.framework_version.startswith("min runtime ")
    assert report.converters["ai-edge-litert"] == "2.3.0"
    assert any("shapes the .tflite file records" in n for n in report.notes)
    x = sample()
    got = Model(tmp_path / "model.tar.gz").run(x)[0]
    np.testing.assert_allclose(got, interpret(litemodels / "float" / "model.tflite", x), rtol=1e-4, atol=1e-6)


def test_int8_model_with_float_io_matches_litert(litemodels, tmp_path):
    """The quantized arithmetic is kept (Q/DQ), so the compiled model reproduces LiteRT's int8 kernels:
    outputs land on the same quantization steps (allowed: one step, 1/256 for this softmax output)."""
    report = compile_lite(litemodels / "int8.tar.gz", tmp_path, f'{{"{INPUT}:0": [1, 16, 16, 3]}}')
    check = report.winner().check
    assert check.status == "verified" and check.max_rel_err <= 1e-3
    assert any("quantized" in n for n in report.notes)
    x = sample(12)
    got = Model(tmp_path / "model.tar.gz").run(x)[0]
    np.testing.assert_allclose(got, interpret(litemodels / "int8" / "model.tflite", x), atol=1 / 256 + 1e-6)


def test_int8_io_model_takes_and_returns_int8(litemodels, tmp_path):
    report = compile_lite(litemodels / "int8io.tar.gz", tmp_path, '{"image": [1, 16, 16, 3]}')
    assert report.winner().check.status == "verified"
    assert report.inputs[0]["dtype"] == "int8" and report.outputs[0]["dtype"] == "int8"
    assert any("integer (quantized) tensors" in n for n in report.notes)
    x = np.random.default_rng(13).integers(-128, 128, (1, *HWC)).astype(np.int8)
    got = Model(tmp_path / "model.tar.gz").run(x)[0]
    want = interpret(litemodels / "int8io" / "model.tflite", x)
    assert got.dtype == np.int8 and np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_aarch64_build_of_the_int8_model_is_verified_under_qemu(litemodels, tmp_path):
    report = compile_lite(litemodels / "int8.tar.gz", tmp_path, target_device="rasp4b", compiler_options=None)
    check = report.winner().check
    assert check.status == "verified" and "qemu" in check.ran_on


def test_config_resizes_the_open_batch(litemodels):
    """DataInputConfig may name the input as TFLite does, with or without ":0", or as Keras did ("image")."""
    model = load(litemodels / "float", '{"image": [3, 16, 16, 3]}')
    assert [(i.name, i.shape) for i in model.inputs] == [(INPUT, (3, 16, 16, 3))]
    assert model.outputs[0].shape == (3, 5)
    x = np.random.default_rng(14).standard_normal((3, *HWC)).astype(np.float32)
    got = ort.InferenceSession(model.onnx_model.SerializeToString()).run(None, {INPUT: x})[0]
    np.testing.assert_allclose(got, model.reference({INPUT: x})[0], rtol=1e-4, atol=1e-6)
    assert load(litemodels / "float", f'{{"{INPUT}": [1, 16, 16, 3]}}').inputs[0].shape == (1, 16, 16, 3)


def test_wrong_input_name_lists_the_models_inputs(litemodels):
    with pytest.raises(ValidationError) as err:
        load(litemodels / "float", '{"data": [1, 16, 16, 3]}')
    assert f"['{INPUT}']" in err.value.message


def test_wrong_shape_is_refused(litemodels):
    with pytest.raises(ValidationError) as err:
        load(litemodels / "float", '{"image": [1, 3, 16, 16]}')
    assert f"does not fit the model's input {INPUT} [?, 16, 16, 3]" in err.value.message


def test_unreadable_file_is_a_convert_error(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"TFL3 but not really a flatbuffer")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert err.value.stage == "convert" and "model.tflite" in err.value.message


def test_two_tflite_files_are_refused_at_fetch(litemodels, tmp_path):
    shutil.copy(litemodels / "float" / "model.tflite", tmp_path / "a.tflite")
    shutil.copy(litemodels / "int8" / "model.tflite", tmp_path / "b.tflite")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert err.value.stage == "fetch" and "exactly one" in err.value.message

"""Core ML target: real coremltools conversions of small models built here, one per DataInputConfig form
AWS documents, class_labels, spec validation from disk, and the typed errors."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
import torch
from onnx import TensorProto
from onnx.helper import make_node, make_tensor_value_info
from torch import nn

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.compiler.coreml import CoreMLInput, convert, parse_inputs, validate
from modelkiln.errors import CompilationError, ValidationError
from modelkiln.runtime import ArtifactError, Model

from ..conftest import onnx_model, tar_gz

FIELD = "InputConfig.DataInputConfig"


class TinyCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return torch.softmax(self.head(y), dim=1)


class Inverse(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x)


@pytest.fixture(scope="module")
def torch_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("torch")
    torch.jit.trace(TinyCnn().eval(), torch.rand(1, 3, 32, 32)).save(str(folder / "model.pt"))
    (folder / "labels.txt").write_text("cat\ndog\n\nbird\nfish\n")
    return folder


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    folder = tmp_path_factory.mktemp("keras")
    inp = keras.Input((32, 32, 3), name="input_1")
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(y))
    keras.Model(inp, out).save(str(folder / "model.keras"))
    return folder


@pytest.fixture(scope="module")
def tf_dir(tmp_path_factory) -> Path:
    import tensorflow as tf
    folder = tmp_path_factory.mktemp("tf")

    class Scorer(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(tf.random.normal((8, 3)))

        @tf.function(input_signature=[tf.TensorSpec((None, 8), tf.float32, name="features")])
        def __call__(self, x):
            return {"probs": tf.nn.softmax(tf.matmul(x, self.w))}

    module = Scorer()
    tf.saved_model.save(module, str(folder / "saved"), signatures=module.__call__)
    return folder


def run(model_dir: Path, framework: str, config: str | None, tmp_path: Path, labels: object = None):
    inputs = parse_inputs(config, framework)
    result = convert(model_dir, framework, inputs, labels, tmp_path)
    assert (tmp_path / "model.mlpackage" / "Manifest.json").is_file()
    return inputs, result, validate(tmp_path, result, inputs, labels)


# ------------------------------------------------------------------------------------------ parsing only

def test_parse_each_documented_form() -> None:
    assert parse_inputs('{"input_1": [1,224,224,3]}', "KERAS") == [CoreMLInput("input_1", (1, 224, 224, 3))]
    assert parse_inputs('[{"shape":[1,3,224,224]}]', "PYTORCH")[0].shape == (1, 3, 224, 224)
    assert parse_inputs('{"input": {"shape": [1,3,224,224]}}', "PYTORCH")[0].name == "input"
    ranged = parse_inputs('{"input_1": {"shape": ["1..10", 224, 224, 3]}}', "TENSORFLOW")[0]
    assert ranged.range_dims == ((1, 10), (224, 224), (224, 224), (3, 3)) and ranged.shape is None
    enum = parse_inputs('{"input_1": {"shape": [[1,224,224,3], [1,160,160,3]], "default_shape": [1,160,160,3]}}',
                        "KERAS")[0]
    assert enum.enumerated == ((1, 224, 224, 3), (1, 160, 160, 3)) and enum.default_shape == (1, 160, 160, 3)
    image = parse_inputs('[{"shape": [1,3,224,224], "type": "Image", "bias": [-1,-1,-1], "scale": 0.007843137255,'
                         ' "color_layout": "BGR"}]', "PYTORCH")[0]
    assert image.image and image.bias == (-1.0, -1.0, -1.0) and image.color_layout == "BGR"
    assert parse_inputs(None, "KERAS") == []


@pytest.mark.parametrize(("config", "framework", "field", "words"), [
    ('[[1,224,224,3]]', "KERAS", FIELD, "keyed by input name"),
    ('{"input_1": {"shape": ["-1", 224, 224, 3]}}', "TENSORFLOW", f"{FIELD}.input_1", "upper bound"),
    ('{"input_1": {"shape": ["10..2", 3]}}', "TENSORFLOW", f"{FIELD}.input_1", "lower <= upper"),
    ('{"input_1": {"shape": [[1,4],[1,5]], "default_shape": [1,6]}}', "KERAS", f"{FIELD}.input_1.default_shape",
     "not one of"),
    ('[{"shape": [1,3,8,8], "type": "Image", "bias": [1,2]}]', "PYTORCH", f"{FIELD}[0].bias", "3 number"),
    ('[{"shape": [1,3,8,8], "type": "Image", "color_layout": "CMYK"}]', "PYTORCH", f"{FIELD}[0].color_layout",
     "RGB, BGR or G"),
    ('[{"shape": [1,3,8,8], "type": "Picture"}]', "PYTORCH", f"{FIELD}[0].type", "Image"),
    ('[{"shape": [1,3,8,8], "scale": 2}]', "PYTORCH", f"{FIELD}[0]", "Image"),
    ('[{"shape": [1,3,8,8], "mean": 2}]', "PYTORCH", f"{FIELD}[0]", "mean"),
    ('{"x": [1, 0]}', "KERAS", f"{FIELD}.x", ">= 1"),
    ('"nonsense"', "KERAS", FIELD, "JSON object"),
])
def test_bad_forms_name_the_entry(config: str, framework: str, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_inputs(config, framework)
    assert info.value.field == field
    assert words in info.value.message


def test_other_frameworks_are_refused(torch_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CompilationError) as info:
        convert(torch_dir, "ONNX", [], None, tmp_path)
    assert info.value.stage == "convert"
    assert "PyTorch, TensorFlow and Keras" in info.value.message and info.value.hint


# ------------------------------------------------------------------------------------------ PyTorch

def test_torch_fixed_shape(torch_dir: Path, tmp_path: Path) -> None:
    _, result, checked = run(torch_dir, "PYTORCH", '[{"shape":[1,3,32,32]}]', tmp_path)
    assert result.inputs == [{"name": "input0", "type": "multiArrayType", "shape": [1, 3, 32, 32],
                              "dtype": "float32"}]
    assert result.outputs[0]["shape"] == [1, 4]
    assert "input0: [1, 3, 32, 32]" in checked and "not run" in checked
    assert result.converters["coremltools"] == "9.0" and "TensorType(name='input0'" in result.command


def test_torch_range_and_mismatch_is_detected(torch_dir: Path, tmp_path: Path) -> None:
    inputs, result, checked = run(torch_dir, "PYTORCH", '[{"shape": ["1..10", 3, 32, 32]}]', tmp_path)
    assert result.inputs[0]["shape_range"] == [[1, 10], [3, 3], [32, 32], [32, 32]]
    assert "range ['1..10'" in checked
    with pytest.raises(CompilationError) as info:  # the package on disk against a different request
        validate(tmp_path, result, parse_inputs('[{"shape": ["1..5", 3, 32, 32]}]', "PYTORCH"), None)
    assert info.value.stage == "verify" and "(1, 5)" in info.value.message
    with pytest.raises(CompilationError, match="is missing"):
        validate(tmp_path, result, parse_inputs('{"image": [1,3,32,32]}', "PYTORCH"), None)


def test_torch_enumerated_shapes(torch_dir: Path, tmp_path: Path) -> None:
    _, result, checked = run(
        torch_dir, "PYTORCH", '[{"shape": [[1,3,32,32],[1,3,16,16]], "default_shape": [1,3,16,16]}]', tmp_path)
    # coremltools stores the default shape first
    assert sorted(result.inputs[0]["enumerated_shapes"]) == [[1, 3, 16, 16], [1, 3, 32, 32]]
    assert result.inputs[0]["shape"] == [1, 3, 16, 16]  # the default
    assert "2 enumerated shapes" in checked


def test_torch_image_classifier_with_list_labels(torch_dir: Path, tmp_path: Path) -> None:
    labels = ["cat", "dog", "bird", "fish"]
    config = ('[{"shape": [1,3,32,32], "type": "Image", "bias": [-1,-1,-1], "scale": 0.007843137255, '
              '"color_layout": "BGR"}]')
    _, result, checked = run(torch_dir, "PYTORCH", config, tmp_path, labels)
    assert result.inputs == [{"name": "input0", "type": "imageType", "width": 32, "height": 32, "color_space": "BGR"}]
    assert [o["name"] for o in result.outputs] == ["classLabel", "classLabel_probs"]
    assert "32x32 BGR image" in checked and "4 class labels" in checked
    with pytest.raises(CompilationError, match="class labels are"):
        validate(tmp_path, result, parse_inputs(config, "PYTORCH"), ["a", "b", "c", "d"])


def test_torch_labels_from_archive_file(torch_dir: Path, tmp_path: Path) -> None:
    _, result, checked = run(torch_dir, "PYTORCH", '[[1,3,32,32]]', tmp_path, "labels.txt")
    assert result.class_labels == ["cat", "dog", "bird", "fish"]  # the blank line is skipped
    assert "4 class labels" in checked


def test_label_count_must_match_scores(torch_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CompilationError) as info:  # static shapes: coremltools' own check, reworded
        convert(torch_dir, "PYTORCH", parse_inputs("[[1,3,32,32]]", "PYTORCH"), ["a", "b"], tmp_path)
    assert "gives 2 labels" in info.value.message and "class_labels" in info.value.message
    with pytest.raises(CompilationError) as info:  # a flexible batch: coremltools accepts 2 labels for 4 scores
        convert(torch_dir, "PYTORCH", parse_inputs('[["1..4",3,32,32]]', "PYTORCH"), ["a", "b"], tmp_path)
    assert "2 labels" in info.value.message and "4 scores" in info.value.message
    with pytest.raises(ValidationError, match="no file 'missing.txt'"):
        convert(torch_dir, "PYTORCH", parse_inputs("[[1,3,32,32]]", "PYTORCH"), "missing.txt", tmp_path)


def test_torch_needs_shapes_and_unsupported_op_is_named(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    torch.jit.trace(Inverse().eval(), torch.rand(1, 3, 3)).save(str(model_dir / "inv.pt"))
    with pytest.raises(ValidationError, match="need DataInputConfig"):
        convert(model_dir, "PYTORCH", [], None, tmp_path / "out")
    with pytest.raises(CompilationError) as info:
        convert(model_dir, "PYTORCH", parse_inputs("[[1,3,3]]", "PYTORCH"), None, tmp_path / "out")
    assert "linalg_inv" in info.value.message and info.value.hint


def test_torch_export_program(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    program = torch.export.export(TinyCnn().eval(), (torch.rand(1, 3, 16, 16),))
    torch.export.save(program, str(model_dir / "model.pt2"))
    _, result, checked = run(model_dir, "PYTORCH", None, tmp_path / "out")
    assert result.inputs[0]["shape"] == [1, 3, 16, 16] and "run_decompositions" in result.command
    with pytest.raises(ValidationError, match="static shapes"):
        convert(model_dir, "PYTORCH", parse_inputs('[{"shape": ["1..4",3,16,16]}]', "PYTORCH"), None, tmp_path)


# ------------------------------------------------------------------------------------------ Keras / TF

def test_keras_fixed_and_nchw_image(keras_dir: Path, tmp_path: Path) -> None:
    _, result, checked = run(keras_dir, "KERAS", '{"input_1": [1,32,32,3]}', tmp_path / "a")
    assert result.inputs[0]["shape"] == [1, 32, 32, 3] and "shape_range" not in result.inputs[0]
    assert result.framework_version == "3.15.1"
    # AWS's image example is NCHW; a channels-last Keras model takes it as NHWC
    config = '{"input_1": {"shape": [1,3,32,32], "type": "Image", "bias": [-1,-1,-1], "scale": 0.0078}}'
    _, result, checked = run(keras_dir, "KERAS", config, tmp_path / "b", ["a", "b", "c"])
    assert result.inputs[0]["type"] == "imageType" and result.inputs[0]["width"] == 32
    assert "3 class labels" in checked
    with pytest.raises(ValidationError) as info:
        convert(keras_dir, "KERAS", parse_inputs('{"data": [1,32,32,3]}', "KERAS"), None, tmp_path / "c")
    assert info.value.field == f"{FIELD}.data" and "input_1" in info.value.message


def test_keras_without_config_fixes_open_batch_at_one(keras_dir: Path, tmp_path: Path) -> None:
    _, result, _ = run(keras_dir, "KERAS", None, tmp_path)
    assert result.inputs[0]["shape"] == [1, 32, 32, 3] and "shape_range" not in result.inputs[0]


def test_saved_model_range(tf_dir: Path, tmp_path: Path) -> None:
    _, result, checked = run(tf_dir, "TENSORFLOW", '{"features": {"shape": ["1..16", 8]}}', tmp_path)
    assert result.inputs[0]["shape_range"] == [[1, 16], [8, 8]]
    assert "signatures['serving_default']" in result.command


def test_saved_model_enumerated_with_label_file(tf_dir: Path, tmp_path: Path) -> None:
    (tf_dir / "names.txt").write_text("low\nmid\nhigh\n")
    config = '{"features": {"shape": [[1,8],[4,8]], "default_shape": [4,8]}}'
    _, result, checked = run(tf_dir, "TENSORFLOW", config, tmp_path, "names.txt")
    assert sorted(result.inputs[0]["enumerated_shapes"]) == [[1, 8], [4, 8]] and result.inputs[0]["shape"] == [4, 8]
    assert result.class_labels == ["low", "mid", "high"]
    (tf_dir / "names.txt").unlink()


# ------------------------------------------------------------------------------------------ the whole job

def test_coreml_job_end_to_end_ships_the_package_with_its_report(torch_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(torch_dir / "model.pt", arcname="model.pt")
        tar.add(torch_dir / "labels.txt", arcname="labels.txt")
    report = compile_job(CompileJob(
        model=archive, framework="PYTORCH", output_dir=tmp_path / "out", target_device="coreml",
        data_input_config='[{"shape": ["1..4", 3, 32, 32]}]', compiler_options='{"class_labels": "labels.txt"}'))
    winner = report.winner()
    assert winner.backend == "coremltools" and winner.check.status == "checked: spec only"
    assert "range ['1..4', '3..3', '32..32', '32..32']" in winner.check.detail
    assert "4 class labels" in winner.check.detail and report.target["device_type"] == "coreml"
    with tarfile.open(tmp_path / "out" / "model.tar.gz") as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile("compiled.meta"))
    assert "model.mlpackage/Manifest.json" in names and "report.json" in names
    assert meta["Requirements"]["TargetDeviceType"] == "coreml" and meta["Backend"]["Name"] == "coremltools"
    with pytest.raises(ArtifactError, match="Core ML package"):
        Model(tmp_path / "out" / "model.tar.gz")


def test_coreml_refuses_frameworks_it_cannot_take(tmp_path: Path) -> None:
    model = onnx_model(tmp_path / "m.onnx", [make_node("Relu", ["x"], ["y"])],
                       [make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(CompilationError, match="takes PyTorch, TensorFlow and Keras models, not ONNX"):
        compile_job(CompileJob(model=tar_gz(tmp_path / "m.tar.gz", model), framework="ONNX",
                               output_dir=tmp_path / "out", target_device="coreml"))

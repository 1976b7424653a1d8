"""The Keras frontend: .h5 and .keras in, NCHW (AWS's documented form) or the model's NHWC accepted,
compiled for real and checked against Keras itself; typed errors otherwise."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

from modelkiln.compiler import CompileJob, compile_job  # noqa: E402
from modelkiln.errors import CompilationError, ValidationError  # noqa: E402
from modelkiln.frontends.keras import load  # noqa: E402
from modelkiln.runtime import Model  # noqa: E402

from ..conftest import tar_gz  # noqa: E402

HWC = (16, 16, 3)
NCHW = '{"image": [1, 3, 16, 16]}'
ORT = '{"kiln-backend": "onnxruntime"}'


def keras_cnn() -> keras.Model:
    """Conv-BN-ReLU, depthwise conv, pooling, dense softmax: a tiny channels-last vision net."""
    keras.utils.set_random_seed(0)
    inp = keras.Input(HWC, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    bn = keras.layers.BatchNormalization()
    x = keras.layers.ReLU()(bn(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="prob")(x))
    rng = np.random.default_rng(0)  # non-trivial BN statistics, so folding them is actually checked
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, rng.uniform(-0.5, 0.5, mean.shape).astype("float32"),
                    rng.uniform(0.5, 2.0, var.shape).astype("float32")])
    return model


def keras_two_in_two_out() -> keras.Model:
    """An image and a vector in, a score and an embedding out: input naming, layout and order."""
    keras.utils.set_random_seed(1)
    img, vec = keras.Input((8, 8, 3), name="img"), keras.Input((4,), name="meta")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(img))
    emb = keras.layers.Concatenate(name="embedding")([x, keras.layers.Dense(4)(vec)])
    return keras.Model([img, vec], [keras.layers.Dense(2, name="score")(emb), emb])


@pytest.fixture(scope="module")
def kmodels(tmp_path_factory) -> Path:
    """cnn.h5, cnn.keras, two.keras, each alone in a folder and as a model.tar.gz."""
    d = tmp_path_factory.mktemp("keras")
    cnn, two = keras_cnn(), keras_two_in_two_out()
    for name, model in (("cnn.h5", cnn), ("cnn.keras", cnn), ("two.keras", two)):
        (d / name.replace(".", "_")).mkdir()
        with warnings.catch_warnings():  # Keras's own h5 writer trips numpy 2's __array__ deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            model.save(d / name.replace(".", "_") / name)
        tar_gz(d / f"{name.replace('.', '_')}.tar.gz", d / name.replace(".", "_") / name)
    return d


def nhwc_sample(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, *HWC)).astype(np.float32)


def compile_keras(tar: Path, out: Path, config: str, **kwargs):
    return compile_job(CompileJob(model=tar, framework="KERAS", output_dir=out, data_input_config=config,
                                  **{"target_device": "ml_c5", "compiler_options": ORT, **kwargs}))


def test_h5_given_nchw_compiles_to_an_nchw_model_that_matches_keras(kmodels, tmp_path):
    report = compile_keras(kmodels / "cnn_h5.tar.gz", tmp_path, NCHW)
    winner = report.winner()
    assert winner.check.status == "verified" and winner.check.max_rel_err <= 1e-3
    assert report.framework == "KERAS" and report.framework_version == keras.__version__
    assert report.inputs == [{"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert report.outputs[0]["name"] == "prob" and report.outputs[0]["shape"] == [1, 5]
    assert any("image [1, 3, 16, 16] NCHW" in n for n in report.notes)
    assert report.converters["tf2onnx"] == "1.17.0" and report.converters["keras"] == keras.__version__
    x = nhwc_sample()
    want = keras.models.load_model(kmodels / "cnn_h5" / "cnn.h5").predict(x, verbose=0)
    got = Model(tmp_path / "model.tar.gz").run(np.transpose(x, (0, 3, 1, 2)))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_keras_file_given_the_models_own_nhwc_keeps_nhwc(kmodels, tmp_path):
    report = compile_keras(kmodels / "cnn_keras.tar.gz", tmp_path, "{'image': [1, 16, 16, 3]}")
    assert report.winner().check.status == "verified"
    assert report.inputs[0]["shape"] == [1, 16, 16, 3]
    assert any("as the model declares it" in n for n in report.notes)
    x = nhwc_sample(4)
    want = keras.models.load_model(kmodels / "cnn_keras" / "cnn.keras").predict(x, verbose=0)
    np.testing.assert_allclose(Model(tmp_path / "model.tar.gz").run(x)[0], want, rtol=1e-4, atol=1e-6)


def test_two_inputs_by_name_in_any_order_and_both_outputs(kmodels, tmp_path):
    config = '{"meta": {"shape": [2, 4], "dtype": "float32"}, "img": [2, 3, 8, 8]}'
    report = compile_keras(kmodels / "two_keras.tar.gz", tmp_path, config)
    assert report.winner().check.status == "verified"
    assert [(i["name"], i["shape"]) for i in report.inputs] == [("img", [2, 3, 8, 8]), ("meta", [2, 4])]
    assert [(o["name"], o["shape"]) for o in report.outputs] == [("score", [2, 2]), ("embedding", [2, 8])]
    rng = np.random.default_rng(5)
    img, meta = rng.standard_normal((2, 8, 8, 3)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    want = keras.models.load_model(kmodels / "two_keras" / "two.keras")([img, meta])
    got = Model(tmp_path / "model.tar.gz").run({"meta": meta, "img": np.transpose(img, (0, 3, 1, 2))})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-4, atol=1e-6)


def test_aarch64_build_is_verified_under_qemu(kmodels, tmp_path):
    report = compile_keras(kmodels / "cnn_h5.tar.gz", tmp_path, NCHW, target_device="rasp4b", compiler_options=None)
    check = report.winner().check
    assert check.status == "verified" and "qemu" in check.ran_on and check.max_rel_err <= 1e-3


def _keras2(value):
    """A Keras 3 layer config in Keras 2's spelling: dtype strings, no module/registered_name/build_config."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy":
            return value["config"]["name"]
        return {k: _keras2(v) for k, v in value.items() if k not in ("module", "registered_name", "build_config")}
    return [_keras2(v) for v in value] if isinstance(value, list) else value


def keras2_h5(model: keras.Model, path: Path) -> Path:
    """A chain model written as tf.keras 2.13 wrote .h5 files (no tf_keras here to write one): Keras 2
    model_config (batch_input_shape, nested-list inbound_nodes) and weights named "layer/kernel:0"."""
    layers, previous = [], None
    for layer in model.layers:
        config = _keras2(layer.get_config())
        if layer.__class__.__name__ == "InputLayer":
            config["batch_input_shape"] = config.pop("batch_shape")
            config.pop("optional", None)
        layers.append({"class_name": layer.__class__.__name__, "config": config, "name": layer.name,
                       "inbound_nodes": [[[previous, 0, 0, {}]]] if previous else []})
        previous = layer.name
    model_config = {"class_name": "Functional", "config": {
        "name": "model", "layers": layers, "input_layers": [[model.layers[0].name, 0, 0]],
        "output_layers": [[previous, 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs.update({"keras_version": "2.13.1", "backend": "tensorflow", "model_config": json.dumps(model_config)})
        weights = f.create_group("model_weights")
        weights.attrs.update({"keras_version": "2.13.1", "backend": "tensorflow",
                              "layer_names": [layer.name.encode() for layer in model.layers]})
        for layer in model.layers:
            group = weights.create_group(layer.name)
            names = [f"{layer.name}/{w.path.split('/')[-1]}:0" for w in layer.weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, value in zip(names, layer.get_weights()):
                group.create_dataset(name, data=value)
    return path


def test_legacy_keras2_h5_compiles_and_reports_its_version(tmp_path):
    cnn = keras_cnn()
    (tmp_path / "in").mkdir()
    model = load(keras2_h5(cnn, tmp_path / "in" / "model.h5").parent, NCHW)
    assert model.framework_version == "2.13.1"
    x = nhwc_sample(6)
    got = ort.InferenceSession(model.onnx_model.SerializeToString()).run(None, {"image": np.transpose(x, (0, 3, 1, 2))})
    np.testing.assert_allclose(got[0], cnn(x).numpy(), rtol=1e-4, atol=1e-6)


def test_missing_config_names_the_nchw_example(kmodels):
    with pytest.raises(ValidationError) as err:
        load(kmodels / "cnn_h5", None)
    assert err.value.field == "InputConfig.DataInputConfig" and '{"image": [1, 3, 16, 16]}' in err.value.message


def test_wrong_input_name_is_refused_with_the_models_names(kmodels):
    """Neo matches Keras inputs by name: AWS's example name input_1 is not guessed to mean image."""
    with pytest.raises(ValidationError) as err:
        load(kmodels / "cnn_keras", '{"input_1": [1, 3, 16, 16]}')
    assert "['image']" in err.value.message and "input_1" in err.value.message


def test_wrong_shape_is_refused_with_both_layouts(kmodels):
    with pytest.raises(ValidationError) as err:
        load(kmodels / "cnn_keras", '{"image": [1, 3, 32, 32]}')
    assert "[1, 3, 16, 16] (NCHW)" in err.value.message and "[1, 16, 16, 3]" in err.value.message


def test_missing_input_is_named(kmodels):
    with pytest.raises(ValidationError, match=r"missing: \['meta'\]"):
        load(kmodels / "two_keras", '{"img": [1, 3, 8, 8]}')


def test_unreadable_file_is_a_convert_error(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, NCHW)
    assert err.value.stage == "convert" and "model.h5" in err.value.message and "model.save" in err.value.hint


def test_two_model_files_are_refused_at_fetch(kmodels, tmp_path):
    shutil.copy(kmodels / "cnn_h5" / "cnn.h5", tmp_path)
    shutil.copy(kmodels / "cnn_keras" / "cnn.keras", tmp_path)
    with pytest.raises(CompilationError) as err:
        load(tmp_path, NCHW)
    assert err.value.stage == "fetch" and "exactly one" in err.value.message


def test_no_model_file_is_refused_at_fetch(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, NCHW)
    assert err.value.stage == "fetch" and "model.onnx" in err.value.message


def test_real_keras2_h5_written_by_tf_keras(tmp_path):
    """A .h5 written by real Keras 2 (tf_keras 2.21, see fixtures/keras2/make_fixture.py), compiled with NCHW."""
    fixture = Path(__file__).parent / "fixtures" / "keras2"
    archive = tar_gz(tmp_path / "model.tar.gz", fixture / "keras2_cnn.h5")
    report = compile_job(CompileJob(model=archive, framework="KERAS", output_dir=tmp_path / "out",
                                    data_input_config='{"image": [1, 3, 16, 16]}', target_device="ml_c5",
                                    compiler_options='{"kiln-backend": "onnxruntime"}'))
    assert report.framework_version.startswith("2.")
    x = np.load(fixture / "keras2_cnn_input.npy")  # NHWC, as Keras 2 was given it
    got = Model(tmp_path / "out" / "model.tar.gz").run(x.transpose(0, 3, 1, 2))[0]
    np.testing.assert_allclose(got, np.load(fixture / "keras2_cnn_output.npy"), rtol=1e-4, atol=1e-6)


def keras_normalized() -> keras.Model:
    """EfficientNet's input pattern: Rescaling, then an adapted Normalization, whose mean and variance Keras 3
    captures as constant tensors (not variables) when the model is traced."""
    keras.utils.set_random_seed(2)
    inp = keras.Input(HWC, name="image")
    norm = keras.layers.Normalization(axis=-1)
    x = norm(keras.layers.Rescaling(1 / 255)(inp))
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="scores")(keras.layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(2)
    norm.adapt(rng.uniform(0, 1, (8, *HWC)).astype("float32") * np.array([0.5, 1.0, 0.2], "float32"))
    return model


def keras_gelu() -> keras.Model:
    """Keras 3's exact gelu (keras.activations.gelu, approximate=False), which TensorFlow computes with Erfc."""
    keras.utils.set_random_seed(3)
    inp = keras.Input(HWC, name="image")
    x = keras.layers.Conv2D(8, 3, activation=keras.activations.gelu)(inp)
    x = keras.layers.Dense(6, activation="gelu")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, keras.layers.Dense(3, name="out")(x))


def saved(model: keras.Model, folder: Path, name: str) -> Path:
    """model saved as folder/name, and archived as folder/model.tar.gz."""
    folder.mkdir()
    with warnings.catch_warnings():  # Keras's own h5 writer trips numpy 2's __array__ deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        model.save(folder / name)
    return tar_gz(folder / "model.tar.gz", folder / name)


def test_normalization_layer_constants_are_frozen_not_inputs(tmp_path):
    model = keras_normalized()
    report = compile_keras(saved(model, tmp_path / "in", "norm.keras"), tmp_path / "out", NCHW)
    assert report.winner().check.status == "verified"
    converted = load(tmp_path / "in", NCHW)
    assert [i.name for i in converted.onnx_model.graph.input] == ["image"]  # mean and variance are constants
    x = np.random.default_rng(4).uniform(0, 255, (1, *HWC)).astype(np.float32)
    got = Model(tmp_path / "out" / "model.tar.gz").run(np.transpose(x, (0, 3, 1, 2)))[0]
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_exact_gelu_erfc_is_converted(tmp_path):
    model = keras_gelu()
    report = compile_keras(saved(model, tmp_path / "in", "gelu.h5"), tmp_path / "out", NCHW)
    assert report.winner().check.status == "verified"
    ops = {n.op_type for n in load(tmp_path / "in", NCHW).onnx_model.graph.node}
    assert "Erf" in ops and "Erfc" not in ops
    x = 3 * nhwc_sample(7)  # the tails, where erfc is near 0 or 2
    got = Model(tmp_path / "out" / "model.tar.gz").run(np.transpose(x, (0, 3, 1, 2)))[0]
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_efficientnet_b0_compiles_and_verifies(tmp_path):
    """keras.applications.EfficientNetB0 (random weights): Rescaling + Normalization in front, swish, SE blocks."""
    keras.utils.set_random_seed(5)
    # a named input: keras numbers unnamed ones per process (input_layer, input_layer_1, ...)
    net = keras.applications.EfficientNetB0(weights=None, input_tensor=keras.Input((64, 64, 3), name="input_layer"),
                                            classes=10, classifier_activation=None)
    report = compile_keras(saved(net, tmp_path / "in", "effnet.keras"), tmp_path / "out",
                           '{"input_layer": [1, 3, 64, 64]}')
    assert report.winner().check.status == "verified"
    assert report.inputs == [{"name": "input_layer", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert report.outputs[0]["shape"] == [1, 10]

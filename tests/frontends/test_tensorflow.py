"""The TensorFlow frontend: SavedModel (a chosen signature) and frozen .pb in, NHWC shapes, compiled for
real and checked against TensorFlow itself; typed errors otherwise."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: E402

from modelkiln.compiler import CompileJob, compile_job  # noqa: E402
from modelkiln.errors import CompilationError, ValidationError  # noqa: E402
from modelkiln.frontends.tensorflow import load  # noqa: E402
from modelkiln.runtime import Model  # noqa: E402

from ..conftest import tar_gz  # noqa: E402
from .test_keras import keras_cnn  # noqa: E402

NHWC = (1, 16, 16, 3)
FROZEN_CONFIG = '{"input_tensor:0": [1, 16, 16, 3]}'
ORT = '{"kiln-backend": "onnxruntime"}'


class TwoSignatures(tf.Module):
    """Static-shape signatures: serving_default (affine) and "scaled" (another computation)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def affine(self, x):
        return {"y": tf.matmul(x, self.w) + 1.0}

    @tf.function(input_signature=[tf.TensorSpec([2, 4], tf.float32, name="x")])
    def scaled(self, x):
        return {"z": tf.nn.relu(x) * 3.0, "a": tf.reduce_sum(x, axis=1)}


class Lgamma(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": tf.math.lgamma(x)}


@pytest.fixture(scope="module")
def tfmodels(tmp_path_factory) -> Path:
    """saved/ (a Keras CNN exported, open batch), two/ (static signatures), lgamma/, frozen/cnn.pb; tarballs."""
    d = tmp_path_factory.mktemp("tf")
    cnn = keras_cnn()
    cnn.export(str(d / "saved" / "cnn_savedmodel"), verbose=False)
    two = TwoSignatures()
    tf.saved_model.save(two, str(d / "two" / "sm"), signatures={"serving_default": two.affine, "scaled": two.scaled})
    tf.saved_model.save(Lgamma(), str(d / "lgamma" / "sm"))
    fn = tf.function(lambda x: cnn(x, training=False)).get_concrete_function(
        tf.TensorSpec(NHWC, tf.float32, name="input_tensor"))
    frozen = convert_variables_to_constants_v2(fn)
    (d / "frozen").mkdir()
    (d / "frozen" / "cnn.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    tar_gz(d / "saved.tar.gz", d / "saved" / "cnn_savedmodel")
    tar_gz(d / "frozen.tar.gz", d / "frozen" / "cnn.pb")
    np.save(d / "x.npy", np.random.default_rng(7).standard_normal(NHWC).astype(np.float32))
    np.save(d / "want.npy", cnn(np.load(d / "x.npy"), training=False).numpy())
    return d


def compile_tf(tar: Path, out: Path, config: str | None, options: str = ORT, **kwargs):
    return compile_job(CompileJob(model=tar, framework="TENSORFLOW", output_dir=out, data_input_config=config,
                                  compiler_options=options, **{"target_device": "ml_c5", **kwargs}))


def test_saved_model_compiles_verifies_and_matches_tensorflow(tfmodels, tmp_path):
    report = compile_tf(tfmodels / "saved.tar.gz", tmp_path, '{"image": [1, 16, 16, 3]}')
    check = report.winner().check
    assert check.status == "verified" and check.max_rel_err <= 1e-3
    assert report.framework == "TENSORFLOW" and report.framework_version == tf.__version__
    assert report.inputs == [{"name": "image", "shape": [1, 16, 16, 3], "dtype": "float32"}]
    assert report.outputs == [{"name": "output_0", "shape": [1, 5], "dtype": "float32"}]
    assert any("signature 'serving_default'" in n for n in report.notes)
    got = Model(tmp_path / "model.tar.gz").run(np.load(tfmodels / "x.npy"))[0]
    np.testing.assert_allclose(got, np.load(tfmodels / "want.npy"), rtol=1e-4, atol=1e-6)


def test_frozen_graph_compiles_verifies_and_matches_tensorflow(tfmodels, tmp_path):
    report = compile_tf(tfmodels / "frozen.tar.gz", tmp_path, FROZEN_CONFIG,
                        '{"kiln-backend": "onnxruntime", "output_names": ["Identity:0"]}')
    assert report.winner().check.status == "verified"
    assert report.framework_version is None  # a GraphDef does not record it
    assert [(i["name"], i["shape"]) for i in report.inputs] == [("input_tensor", [1, 16, 16, 3])]
    assert report.outputs[0]["name"] == "Identity"
    got = Model(tmp_path / "model.tar.gz").run(np.load(tfmodels / "x.npy"))[0]
    np.testing.assert_allclose(got, np.load(tfmodels / "want.npy"), rtol=1e-4, atol=1e-6)


def test_aarch64_build_is_verified_under_qemu(tfmodels, tmp_path):
    report = compile_tf(tfmodels / "frozen.tar.gz", tmp_path, FROZEN_CONFIG, '{"output_names": "Identity"}',
                        target_device="rasp4b")
    check = report.winner().check
    assert check.status == "verified" and "qemu" in check.ran_on and check.max_rel_err <= 1e-3


def test_frozen_graph_name_forms(tfmodels):
    """Inputs with or without ":0"; output_names as a list or a comma string (here with an inner node)."""
    model = load(tfmodels / "frozen", '{"input_tensor": [1, 16, 16, 3]}', None, {"output_names": ["Identity"]})
    assert [i.name for i in model.inputs] == ["input_tensor"] and [o.name for o in model.outputs] == ["Identity"]
    graph = tf.compat.v1.GraphDef.FromString((tfmodels / "frozen" / "cnn.pb").read_bytes())
    pooled = next(n.name for n in graph.node if n.op == "Mean")  # GlobalAveragePooling2D
    model = load(tfmodels / "frozen", FROZEN_CONFIG, None, {"output_names": f"Identity:0, {pooled}"})
    assert [(o.name, o.shape) for o in model.outputs] == [("Identity", (1, 5)), (pooled, (1, 8))]
    x = np.load(tfmodels / "x.npy")
    np.testing.assert_allclose(model.reference({"input_tensor": x})[0], np.load(tfmodels / "want.npy"),
                               rtol=1e-5, atol=1e-7)
    session = ort.InferenceSession(model.onnx_model.SerializeToString())
    for got, want in zip(session.run(None, {"input_tensor": x}), model.reference({"input_tensor": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_static_signature_needs_no_config_and_signature_def_key_picks_another(tfmodels):
    default = load(tfmodels / "two", None)
    assert [(i.name, i.shape) for i in default.inputs] == [("x", (1, 4))]
    assert [o.name for o in default.outputs] == ["y"]
    scaled = load(tfmodels / "two", None, None, {"signature_def_key": "scaled"})
    assert [(i.name, i.shape) for i in scaled.inputs] == [("x", (2, 4))]
    assert [(o.name, o.shape) for o in scaled.outputs] == [("a", (2,)), ("z", (2, 4))]  # sorted keys
    x = np.array([[-1, 2, 3, -4], [5, -6, 7, 8]], np.float32)
    a, z = scaled.reference({"x": x})
    np.testing.assert_allclose(z, np.maximum(x, 0) * 3)
    np.testing.assert_allclose(a, x.sum(axis=1))
    assert {n.op_type for n in scaled.onnx_model.graph.node} >= {"Relu", "ReduceSum"}


def test_bad_signature_def_key_lists_the_signatures(tfmodels):
    with pytest.raises(ValidationError) as err:
        load(tfmodels / "two", None, None, {"signature_def_key": "predict"})
    assert err.value.field == "OutputConfig.CompilerOptions.signature_def_key"
    assert "['scaled', 'serving_default']" in err.value.message


def test_open_batch_needs_data_input_config(tfmodels):
    with pytest.raises(ValidationError) as err:
        load(tfmodels / "saved", None)
    assert "image [?, 16, 16, 3]" in err.value.message and '{"image": [1, 16, 16, 3]}' in err.value.message


def test_wrong_input_name_lists_the_models_inputs(tfmodels):
    with pytest.raises(ValidationError, match=r"model's inputs are \['image'\]"):
        load(tfmodels / "saved", '{"data": [1, 16, 16, 3]}')
    with pytest.raises(ValidationError, match=r"model's inputs are \['input_tensor'\]"):
        load(tfmodels / "frozen", '{"input:0": [1, 16, 16, 3]}', None, {"output_names": ["Identity"]})


def test_nchw_shape_is_refused_for_tensorflow(tfmodels):
    with pytest.raises(ValidationError) as err:
        load(tfmodels / "saved", '{"image": [1, 3, 16, 16]}')
    assert "does not fit the model's input image [?, 16, 16, 3]" in err.value.message


def tf1_graph(path: Path) -> Path:
    """A TF1-style frozen graph with two heads (probs, embedding, the latter through erfc) and the litter real
    graphs carry: an unused constant, an init NoOp, an Assert on the input."""
    rng = np.random.default_rng(8)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="features")
        hidden = tf.nn.relu(tf.matmul(x, tf.constant(rng.standard_normal((8, 6)), tf.float32)), name="hidden")
        tf.nn.softmax(tf.matmul(hidden, tf.constant(rng.standard_normal((6, 3)), tf.float32)), name="probs")
        tf.math.l2_normalize(hidden * tf.math.erfc(hidden - 1), axis=1, name="embedding")
        tf.constant(1.0, name="unused")
        tf.no_op(name="init")
        tf.compat.v1.Assert(tf.reduce_all(tf.math.is_finite(x)), [x], name="finite")
    path.parent.mkdir()
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return tar_gz(path.parent / "model.tar.gz", path)


def test_frozen_graph_without_output_names_outputs_its_sinks(tmp_path):
    """As Neo: the outputs are the nodes nothing consumes (constants, NoOp and Assert are no outputs)."""
    archive = tf1_graph(tmp_path / "in" / "graph.pb")
    report = compile_tf(archive, tmp_path / "out", '{"features": [2, 8]}')
    assert report.winner().check.status == "verified"
    assert [(o["name"], o["shape"]) for o in report.outputs] == [("probs", [2, 3]), ("embedding", [2, 6])]
    assert any("no output_names" in n and "probs:0, embedding:0" in n for n in report.notes)
    model = load(tmp_path / "in", '{"features": [2, 8]}')
    assert "Erfc" not in {n.op_type for n in model.onnx_model.graph.node}  # erfc(x) = 1 - erf(x)
    x = np.random.default_rng(9).standard_normal((2, 8)).astype(np.float32)
    for got, want in zip(Model(tmp_path / "out" / "model.tar.gz").run(x), model.reference({"features": x})):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_unknown_output_names_suggest_the_final_nodes(tfmodels):
    with pytest.raises(ValidationError) as err:
        load(tfmodels / "frozen", FROZEN_CONFIG, None, {"output_names": ["softmax:0"]})
    assert err.value.field == "OutputConfig.CompilerOptions.output_names"
    assert "['Identity']" in err.value.message  # the graph's final nodes are suggested


def test_frozen_graph_needs_data_input_config(tfmodels):
    with pytest.raises(ValidationError, match='input_tensor:0'):
        load(tfmodels / "frozen", None, None, {"output_names": ["Identity"]})


def test_unconvertible_operation_is_named(tfmodels):
    with pytest.raises(CompilationError) as err:
        load(tfmodels / "lgamma", None)
    assert err.value.stage == "convert" and "Lgamma" in err.value.message


def test_unreadable_pb_is_a_convert_error(tmp_path):
    (tmp_path / "model.pb").write_bytes(b"\xff\xfe definitely not protobuf")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, FROZEN_CONFIG, None, {"output_names": "Identity"})
    assert err.value.stage == "convert" and "model.pb" in err.value.message


def test_saved_model_with_a_stray_pb_is_refused_at_fetch(tfmodels, tmp_path):
    shutil.copytree(tfmodels / "two" / "sm", tmp_path / "sm")
    shutil.copy(tfmodels / "frozen" / "cnn.pb", tmp_path / "cnn.pb")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert err.value.stage == "fetch" and "cnn.pb" in err.value.message


def test_two_frozen_graphs_are_refused_at_fetch(tfmodels, tmp_path):
    shutil.copy(tfmodels / "frozen" / "cnn.pb", tmp_path / "a.pb")
    shutil.copy(tfmodels / "frozen" / "cnn.pb", tmp_path / "b.pb")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, FROZEN_CONFIG, None, {"output_names": "Identity"})
    assert err.value.stage == "fetch" and "exactly one" in err.value.message


class WithV1Optimizer(tf.Module):
    """A model saved together with an optimizer's slot variables (Adam's m and v), as Keras 2 models such as
    Spotify's Basic Pitch were: TF 2.21's object loader revives the optimizer as a plain object without
    add_slot, so tf.saved_model.load fails though the serving signature is fine."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
        self.b = tf.Variable(np.ones(3, np.float32))
        self.optimizer = tf.compat.v1.train.AdamOptimizer(0.1)
        self.optimizer.minimize(lambda: tf.reduce_sum((self.w - 1.0) ** 2), var_list=[self.w])

    @tf.function(input_signature=[tf.TensorSpec([2, 4], tf.float32, name="features")])
    def __call__(self, features):
        hidden = tf.matmul(features, self.w) + self.b
        return {"scores": tf.nn.relu(hidden), "total": tf.reduce_sum(hidden, axis=1)}


@pytest.fixture(scope="module")
def slotted(tmp_path_factory) -> Path:
    """sm/ a SavedModel with optimizer slots (TF2's loader refuses it) and sm.tar.gz; w.npy, b.npy its weights."""
    d = tmp_path_factory.mktemp("slotted")
    model = WithV1Optimizer()
    tf.saved_model.save(model, str(d / "sm"))
    np.save(d / "w.npy", model.w.numpy())
    np.save(d / "b.npy", model.b.numpy())
    tar_gz(d / "sm.tar.gz", d / "sm")
    return d


def test_saved_model_tf2_cannot_load_falls_back_to_tf1_loader(slotted, tmp_path):
    with pytest.raises(AttributeError, match="add_slot"):  # the failure this fallback exists for
        tf.saved_model.load(str(slotted / "sm"))
    report = compile_tf(slotted / "sm.tar.gz", tmp_path, None)
    check = report.winner().check
    assert check.status == "verified" and check.max_rel_err <= 1e-4
    assert report.framework_version == tf.__version__
    assert report.inputs == [{"name": "features", "shape": [2, 4], "dtype": "float32"}]
    assert [(o["name"], o["shape"]) for o in report.outputs] == [("scores", [2, 3]), ("total", [2])]
    assert any("loaded with TF1's loader" in n and "'_UserObject' object has no attribute 'add_slot'" in n
               for n in report.notes)
    x = np.array([[1, -2, 3, 0.5], [-1, 4, 0, 2]], np.float32)
    hidden = x @ np.load(slotted / "w.npy") + np.load(slotted / "b.npy")  # the saved weights, not Adam's slots
    scores, total = Model(tmp_path / "model.tar.gz").run(x)
    np.testing.assert_allclose(scores, np.maximum(hidden, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, hidden.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_tf1_fallback_keeps_signature_def_key_and_placeholder_names(slotted):
    with pytest.raises(ValidationError) as err:
        load(slotted / "sm", None, None, {"signature_def_key": "predict"})
    assert err.value.field == "OutputConfig.CompilerOptions.signature_def_key"
    assert "['serving_default']" in err.value.message  # TF1's "__saved_model_init_op" is no signature
    model = load(slotted / "sm", '{"serving_default_features:0": [2, 4]}')
    assert [i.name for i in model.inputs] == ["features"]
    assert "StatefulPartitionedCall" not in {n.op_type for n in model.onnx_model.graph.node}


def test_saved_model_both_loaders_fail_gives_both_reasons(slotted, tmp_path):
    shutil.copytree(slotted / "sm", tmp_path / "sm")
    shutil.rmtree(tmp_path / "sm" / "variables")  # TF1's loader cannot restore without the checkpoint
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert err.value.stage == "convert"
    assert "add_slot" in err.value.message and "nor can TF1's loader" in err.value.message

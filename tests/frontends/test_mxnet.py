"""The MXNet frontend against REAL MXNet 1.9.1: fixtures/mxnet/ holds symbol.json + .params files and the
outputs MXNet itself computed (make_fixtures.py), compiled here through the whole pipeline."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.errors import CompilationError, ValidationError
from modelkiln.frontends.mxnet import load
from modelkiln.runtime import Model

from ..conftest import tar_gz

FIXTURES = Path(__file__).parent / "fixtures" / "mxnet"
CONFIG = '{"data": [1, 3, 16, 16]}'
ORT = '{"kiln-backend": "onnxruntime"}'


def _model_dir(tmp_path: Path, net: str, params_name: str | None = None) -> Path:
    d = tmp_path / net
    d.mkdir()
    shutil.copy(FIXTURES / f"{net}-symbol.json", d)
    shutil.copy(FIXTURES / f"{net}-0000.params", d / (params_name or f"{net}-0000.params"))
    return d


def _mxnet_outputs(net: str) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(FIXTURES.glob(f"{net}-output*.npy"))]


def _compile(tmp_path: Path, net: str, device: str = "ml_c5"):
    d = _model_dir(tmp_path, net)
    archive = tar_gz(tmp_path / f"{net}.tar.gz", *sorted(d.iterdir()))
    out = tmp_path / "out"
    report = compile_job(CompileJob(model=archive, framework="MXNET", output_dir=out, data_input_config=CONFIG,
                                    target_device=device, compiler_options=ORT))
    return report, out


@pytest.mark.parametrize("net", ["small", "branchy"])
def test_compiled_artifact_matches_real_mxnet(tmp_path, net):
    report, out = _compile(tmp_path, net)
    winner = report.winner()
    assert winner.backend == "onnxruntime" and winner.check.status == "verified"
    assert report.framework == "MXNET" and report.framework_version == "1.9.1"
    x = np.load(FIXTURES / f"{net}-input.npy")
    got = Model(out / "model.tar.gz").run({"data": x})
    expected = _mxnet_outputs(net)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-4)


def test_aarch64_compile_verifies_under_qemu(tmp_path):
    report, out = _compile(tmp_path, "small", device="rasp4b")
    winner = report.winner()
    assert winner.check.status == "verified" and "qemu" in winner.check.ran_on


def test_numpy_reference_matches_real_mxnet_and_names_outputs(tmp_path):
    model = load(_model_dir(tmp_path, "branchy", "branchy.params"), CONFIG)
    assert [o.name for o in model.outputs] == ["prob_output", "feat_output"]
    assert [o.shape for o in model.outputs] == [(64, 5), (1, 8, 16, 16)]
    assert model.onnx_model.ir_version == 10
    x = np.load(FIXTURES / "branchy-input.npy")
    for got, expected in zip(model.reference({"data": x}), _mxnet_outputs("branchy")):
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_corner_cases_match_real_mxnet(tmp_path):
    """Full-convention pooling, dilated grouped conv, SELU/RReLU, Reshape codes...: see make_fixtures.edge()."""
    import onnxruntime as ort

    model = load(_model_dir(tmp_path, "edge"), '{"data": [2, 3, 11, 11]}')
    x = np.load(FIXTURES / "edge-input.npy")
    session = ort.InferenceSession(model.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = _mxnet_outputs("edge")
    for got, reference, e in zip(session.run(None, {"data": x}), model.reference({"data": x}), expected, strict=True):
        np.testing.assert_allclose(got, e, atol=1e-5 * np.abs(e).max())
        np.testing.assert_allclose(reference, e, atol=1e-5 * np.abs(e).max())


def test_label_variable_is_not_an_input(tmp_path):
    model = load(_model_dir(tmp_path, "small"), CONFIG)
    assert [i.name for i in model.inputs] == ["data"]  # softmax_label is dropped
    initializers = {i.name for i in model.onnx_model.graph.initializer}
    assert "bn0_gamma" in initializers and "bn1_gamma" not in initializers  # fix_gamma: read as ones


# ---- errors -----------------------------------------------------------------------------------------------

def test_file_set_errors(tmp_path):
    with pytest.raises(CompilationError, match="exactly one \\*-symbol.json") as err:
        load(tmp_path, CONFIG)
    assert err.value.stage == "fetch"
    d = _model_dir(tmp_path, "small")
    shutil.copy(FIXTURES / "branchy-symbol.json", d)
    with pytest.raises(CompilationError, match="branchy-symbol.json, small-symbol.json"):
        load(d, CONFIG)
    (d / "branchy-symbol.json").unlink()
    (d / "small-0000.params").unlink()
    with pytest.raises(CompilationError, match="exactly one .params") as err:
        load(d, CONFIG)
    assert err.value.stage == "fetch" and "save_checkpoint" in err.value.hint


def test_epoch_params_next_to_other_checkpoints_are_picked_by_prefix(tmp_path):
    d = _model_dir(tmp_path, "small")
    shutil.copy(FIXTURES / "branchy-0000.params", d / "other-0003.params")
    assert load(d, CONFIG).outputs[0].shape == (1, 10)


def test_truncated_params(tmp_path):
    d = _model_dir(tmp_path, "small")
    data = (d / "small-0000.params").read_bytes()
    (d / "small-0000.params").write_bytes(data[:1000])
    with pytest.raises(CompilationError, match="truncated") as err:
        load(d, CONFIG)
    assert err.value.stage == "convert"
    (d / "small-0000.params").write_bytes(b"\0" * 64)
    with pytest.raises(CompilationError, match="not an MXNet .params file"):
        load(d, CONFIG)


def test_unsupported_operator_is_named_with_its_node(tmp_path):
    d = _model_dir(tmp_path, "small")
    symbol = json.loads((d / "small-symbol.json").read_text())
    index = next(i for i, n in enumerate(symbol["nodes"]) if n["name"] == "tanh2")
    symbol["nodes"][index]["op"] = "Deconvolution"
    (d / "small-symbol.json").write_text(json.dumps(symbol))
    with pytest.raises(CompilationError) as err:
        load(d, CONFIG)
    assert err.value.stage == "convert"
    assert f"'Deconvolution' (node {index} 'tanh2')" in err.value.message
    assert "Convolution" in err.value.message and "ONNX" in err.value.hint


def test_unsupported_attribute_value_is_named(tmp_path):
    d = _model_dir(tmp_path, "small")
    text = (d / "small-symbol.json").read_text().replace('"act_type": "tanh"', '"act_type": "log_sigmoid"')
    (d / "small-symbol.json").write_text(text)
    with pytest.raises(CompilationError, match="'tanh2': Activation act_type='log_sigmoid'"):
        load(d, CONFIG)


@pytest.mark.parametrize("config, words", [
    (None, "do not record input shapes"),
    ('{"image": [1, 3, 16, 16]}', "symbol's inputs are ['data']"),
    ('{"data": [1, 4, 16, 16]}', "node 3 'conv0' (Convolution)"),
])
def test_data_input_config_errors(tmp_path, config, words):
    with pytest.raises(ValidationError) as err:
        load(_model_dir(tmp_path, "small"), config)
    assert err.value.field == "InputConfig.DataInputConfig"
    assert words in err.value.message


def test_params_reader_reads_older_array_layouts(tmp_path):
    """Files from before MXNet 1.0: V1 arrays (no storage type) and the oldest (uint32 shape, no magic)."""
    import struct

    from modelkiln.frontends.mxnet_params import read_params

    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    b = np.array([1.5, -2.0], np.float32)
    body = struct.pack("<QQQ", 0x112, 0, 2)
    body += struct.pack("<Ii2qiii", 0xF993FAC8, 2, 2, 3, 1, 0, 2) + a.tobytes()  # V1, float16
    body += struct.pack("<IIiii", 1, 2, 1, 0, 0) + b.tobytes()  # legacy: ndim 1, dim 2, float32
    names = [b"arg:w", b"aux:m"]
    body += struct.pack("<Q", 2) + b"".join(struct.pack("<Q", len(n)) + n for n in names)
    (tmp_path / "m.params").write_bytes(body)
    got = read_params(tmp_path / "m.params")
    assert list(got) == ["w", "m"]
    np.testing.assert_array_equal(got["w"], a)
    np.testing.assert_array_equal(got["m"], b)

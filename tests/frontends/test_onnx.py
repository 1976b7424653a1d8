"""The ONNX frontend: Neo's file rules, DataInputConfig against the graph, and typed errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from onnx import TensorProto
from onnx.helper import make_node, make_tensor_value_info

from modelkiln.errors import CompilationError
from modelkiln.frontends.onnx import load

from ..conftest import onnx_model


def _relu(path, shape=("N", 4)):
    return onnx_model(path, [make_node("Relu", ["x"], ["y"], name="r")],
                      [make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                      [make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])


def test_dynamic_dims_are_pinned_from_data_input_config(tmp_path):
    _relu(tmp_path / "m.onnx")
    model = load(tmp_path, '{"x": [3, 4]}')
    assert [(i.name, i.shape, i.dtype) for i in model.inputs] == [("x", (3, 4), "float32")]
    assert [(o.name, o.shape) for o in model.outputs] == [("y", (3, 4))]
    dims = model.onnx_model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 4]
    x = np.array([[-1, 2, -3, 4]] * 3, np.float32)
    np.testing.assert_array_equal(model.reference({"x": x})[0], np.maximum(x, 0))


def test_minus_one_dims_are_dynamic_and_the_hint_never_suggests_them(tmp_path):
    """paddle2onnx-style exports (e.g. OCR detectors) write -1 for a dynamic dim, beside named ones."""
    _relu(tmp_path / "m.onnx", shape=(-1, 3, "h", "w"))
    model = load(tmp_path, '{"x": [1, 3, 48, 192]}')
    assert model.inputs[0].shape == (1, 3, 48, 192) and model.outputs[0].shape == (1, 3, 48, 192)
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert "[-1, 3, 'h', 'w']" not in err.value.message and "['?', 3, 'h', 'w']" in err.value.message
    assert '{"x": [1, 3, 1, 1]}' in err.value.hint and "dynamic dims" in err.value.hint


def test_static_model_needs_no_config(models, tmp_path):
    shutil.copy(models / "cnn.onnx", tmp_path)
    model = load(tmp_path, None)
    assert model.inputs[0].shape == (1, 3, 32, 32) and model.framework_version == "opset 17"


@pytest.mark.parametrize("config, words", [
    (None, ["dynamic shape", "'x'"]),
    ('{"data": [3, 4]}', ["unknown: ['data']", "missing: ['x']"]),
    ('{"x": [3, 4, 5]}', ["shape [3, 4, 5]", "declares"]),
])
def test_input_mismatch_errors_name_the_input_and_suggest_a_config(tmp_path, config, words):
    _relu(tmp_path / "m.onnx")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, config)
    assert err.value.stage == "convert"
    for word in words:
        assert word in err.value.message
    assert "DataInputConfig" in err.value.hint and '"x"' in err.value.hint


def test_static_dim_conflict(tmp_path):
    _relu(tmp_path / "m.onnx", shape=(2, 4))
    with pytest.raises(CompilationError, match=r"declares \[2, 4\]"):
        load(tmp_path, '{"x": [3, 4]}')


def test_exactly_one_onnx_file(models, tmp_path):
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert err.value.stage == "fetch" and "no .onnx file" in err.value.message
    shutil.copy(models / "cnn.onnx", tmp_path / "a.onnx")
    shutil.copy(models / "cnn.onnx", tmp_path / "b.onnx")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert "exactly one .onnx" in err.value.message and "a.onnx, b.onnx" in err.value.message
    assert err.value.hint


def test_macos_litter_is_ignored(models, tmp_path):
    shutil.copy(models / "cnn.onnx", tmp_path / "model.onnx")
    (tmp_path / "._model.onnx").write_bytes(b"\0\5\26\7")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "model.onnx").write_bytes(b"junk")
    assert load(tmp_path, None).inputs[0].name == "data"


def test_unreadable_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"this is not protobuf \xff\xfe")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert "not a readable ONNX file" in err.value.message and err.value.hint


def test_non_standard_operator_is_named_with_its_node(tmp_path):
    onnx_model(tmp_path / "m.onnx", [make_node("Rleu", ["x"], ["y"], name="typo_node")],
               [make_tensor_value_info("x", TensorProto.FLOAT, [2])],
               [make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert "'Rleu'" in err.value.message and "'typo_node'" in err.value.message


def test_new_ir_version_is_lowered_with_a_note(tmp_path):
    import onnx

    path = _relu(tmp_path / "m.onnx", shape=(2, 4))
    model = onnx.load(str(path))
    model.ir_version = 13
    onnx.save(model, str(path))
    loaded = load(tmp_path, None)
    assert loaded.onnx_model.ir_version == 10 and "IR version 13" in loaded.notes[0]

"""Folding Ifs that the pinned input shapes decide: Silero VAD's pattern, hand-built and the real model."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx.helper import make_graph, make_node, make_tensor_value_info

from modelkiln.frontends.input_config import parse_data_input_config
from modelkiln.frontends.onnx import load, pin_input_shapes
from modelkiln.frontends.onnx_fold import fold_static_ifs

from ..conftest import onnx_model

SILERO = "silero-vad==6.2.3"
WHEELS = Path(sys.prefix) / "share" / "kiln" / "corpus" / "wheels"  # pip's downloads, kept between runs


def _const(name: str, value) -> onnx.NodeProto:
    return make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.array(value, np.int64), name))


def _branch(nodes: list[onnx.NodeProto], output: str) -> onnx.GraphProto:
    return make_graph(nodes, "branch", [], [make_tensor_value_info(output, TensorProto.FLOAT, None)])


def _shape_tests(post: str) -> onnx.GraphProto:
    """Silero's two shape tests: squeeze the batch dim away if it is 1 (rank 1 then), put it back if the rank
    is 1, else transpose (which needs rank 2); then `post`. Both outer branches reuse these local names."""
    squeeze = _branch([_const("ax", [0]), make_node("Squeeze", ["x", "ax"], ["sq"])], "sq")
    keep = _branch([make_node("Identity", ["x"], ["id"])], "id")
    unsqueeze = _branch([_const("ax2", [0]), make_node("Unsqueeze", ["a", "ax2"], ["un"])], "un")
    transpose = _branch([make_node("Transpose", ["a"], ["tr"], perm=[1, 0])], "tr")
    return _branch([
        _const("zero", 0), _const("one", 1),
        make_node("Shape", ["x"], ["s"]), make_node("Gather", ["s", "zero"], ["batch"]),
        make_node("Equal", ["batch", "one"], ["batch_is_1"]),
        make_node("If", ["batch_is_1"], ["a"], then_branch=squeeze, else_branch=keep),
        make_node("Shape", ["a"], ["s2"]), make_node("Size", ["s2"], ["rank"]),
        make_node("Equal", ["rank", "one"], ["rank_is_1"]),
        make_node("If", ["rank_is_1"], ["c"], then_branch=unsqueeze, else_branch=transpose),
        make_node(post, ["c"], ["y"]),
    ], "y")


def _on_flag(path: Path, then_branch: onnx.GraphProto, else_branch: onnx.GraphProto) -> Path:
    """x [N, 4] and a data flag: If(flag == 1) with these branches."""
    return onnx_model(path, [
        _const("k", 1), make_node("Equal", ["flag", "k"], ["f"]),
        make_node("If", ["f"], ["y"], then_branch=then_branch, else_branch=else_branch, name="by_flag"),
    ], [make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        make_tensor_value_info("flag", TensorProto.INT64, [])], [make_tensor_value_info("y", TensorProto.FLOAT, None)])


def _pattern(path: Path) -> Path:
    """Silero's pattern: both sides of a data-dependent If hold the shape tests."""
    return _on_flag(path, _shape_tests("Neg"), _shape_tests("Relu"))


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 3])
def test_shape_tests_fold_and_the_data_if_stays(tmp_path, batch):
    path = _pattern(tmp_path / "m.onnx")
    config = f'{{"x": [{batch}, 4], "flag": []}}'
    pinned = onnx.load(str(path))
    pin_input_shapes(pinned, parse_data_input_config(config))
    with pytest.raises(Exception, match="Squeeze|Transpose"):  # the bug: the dead side is ill-typed now
        ort.InferenceSession(pinned.SerializeToString(), providers=["CPUExecutionProvider"])

    model = load(tmp_path, config)
    ifs = [n for n in _all_nodes(model.onnx_model.graph) if n.op_type == "If"]
    assert [(n.input[0], n in model.onnx_model.graph.node) for n in ifs] == [("f", True)]
    assert "4 If node(s)" in model.notes[0]
    assert model.outputs[0].shape == ((1, 4) if batch == 1 else (4, batch))
    original = _session(path)
    for flag in (0, 1):
        feeds = {"x": np.random.default_rng(flag).standard_normal((batch, 4)).astype(np.float32),
                 "flag": np.array(flag, np.int64)}
        np.testing.assert_array_equal(model.reference(feeds)[0], original.run(None, feeds)[0])


def test_folding_renames_clashing_names_and_drops_stale_value_info(tmp_path):
    path = _pattern(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    stale = make_tensor_value_info("a", TensorProto.FLOAT, [7, 7])  # what an exporter might have written
    model.graph.node[2].attribute[0].g.value_info.append(stale)
    pin_input_shapes(model, parse_data_input_config('{"x": [1, 4], "flag": []}'))
    fold_static_ifs(model)
    then_branch, else_branch = (a.g for a in model.graph.node[2].attribute)
    assert not then_branch.value_info
    then_names = {o for n in then_branch.node for o in n.output}
    else_names = {o for n in else_branch.node for o in n.output}
    assert then_names & else_names == {"y", "a", "c"}  # the If outputs; the inlined locals were renamed
    assert not [n for n in _all_nodes(model.graph) if n.op_type in ("Shape", "Size", "Gather")]  # dead tests
    names = [n.name for n in _all_nodes(model.graph) if n.name]
    assert len(names) == len(set(names))


def test_a_branch_that_cannot_run_on_the_shapes_is_dropped_with_a_note(tmp_path):
    """If(flag) whose then side squeezes the batch dim: with a batch of 3 only the else side can ever run."""
    squeeze = _branch([_const("ax", [0]), make_node("Squeeze", ["x", "ax"], ["sq"])], "sq")
    path = _on_flag(tmp_path / "m.onnx", squeeze, _branch([make_node("Neg", ["x"], ["neg"])], "neg"))
    model = load(tmp_path, '{"x": [3, 4], "flag": []}')
    assert not [n for n in _all_nodes(model.onnx_model.graph) if n.op_type == "If"]
    assert len(model.notes) == 1 and "'by_flag'" in model.notes[0] and "then_branch cannot run" in model.notes[0]
    feeds = {"x": np.ones((3, 4), np.float32), "flag": np.array(0, np.int64)}
    np.testing.assert_array_equal(model.reference(feeds)[0], _session(path).run(None, feeds)[0])
    with pytest.raises(Exception, match="Squeeze"):  # the model as shipped fails where the branch was dropped
        _session(path).run(None, {**feeds, "flag": np.array(1, np.int64)})


def test_unpinned_shapes_decide_nothing(tmp_path):
    model = onnx.load(str(_pattern(tmp_path / "m.onnx")))  # x is [N, 4]: no shape test is decided
    before = model.SerializeToString()
    assert fold_static_ifs(model) == [] and model.SerializeToString() == before


def _silero(cache: Path, into: Path) -> Path:
    """silero_vad.onnx out of the PyPI wheel (downloaded once into the shared cache), written into `into`."""
    wheels = sorted(cache.glob("silero_vad-6.2.3-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        SILERO, "-d", str(cache)], check=True, timeout=120)
        wheels = sorted(cache.glob("silero_vad-6.2.3-*.whl"))
    target = into / "silero_vad.onnx"
    target.write_bytes(zipfile.ZipFile(wheels[0]).read("silero_vad/data/silero_vad.onnx"))
    return target


def test_real_silero_vad(tmp_path):
    """512 samples: only the 16 kHz side can run (the 8 kHz one takes 256), so no If is left; 256 samples:
    both can, and the If on the sample rate stays. Either way the outputs are onnxruntime's on the file."""
    original = _session(_silero(WHEELS, tmp_path))
    rng = np.random.default_rng(0)
    for samples, ifs_left, rates in ((512, [], (16000,)), (256, ["Equal_0_C"], (16000, 8000))):
        model = load(tmp_path, f'{{"input": [1, {samples}], "state": [2, 1, 128], "sr": []}}')
        assert [n.input[0] for n in _all_nodes(model.onnx_model.graph) if n.op_type == "If"] == ifs_left
        assert [(o.name, o.shape) for o in model.outputs] == [("output", (1, 1)), ("stateN", (2, 1, 128))]
        for rate in rates:
            feeds = {"input": rng.standard_normal((1, samples)).astype(np.float32),
                     "state": rng.standard_normal((2, 1, 128)).astype(np.float32), "sr": np.array(rate, np.int64)}
            for got, want in zip(model.reference(feeds), original.run(None, feeds)):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "else_branch cannot run" in " ".join(load(tmp_path, '{"input": [1, 512], "state": [2, 1, 128], '
                                                           '"sr": []}').notes)

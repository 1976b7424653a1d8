"""Artifacts record the backend runtime they need (compiled.meta Requirements.Runtime); loading one checks it."""
from __future__ import annotations

import io
import json
import tarfile
from importlib.metadata import version

import numpy as np
import onnx
import pytest

from modelkiln.runtime import ArtifactError, Model
from modelkiln.runtime.model import check_members
from modelkiln.runtime.versions import release, satisfies

from ..conftest import CNN_SHAPE


def _meta(out):
    with tarfile.open(out / "model.tar.gz") as tar:
        return json.load(tar.extractfile("compiled.meta"))


def _with_runtime(src, dst, runtime):
    """The artifact extracted to dst, its Requirements.Runtime replaced (None: removed, as before Kiln wrote it)."""
    with tarfile.open(src) as tar:
        tar.extractall(dst, filter="data")
    meta = json.loads((dst / "compiled.meta").read_text())
    meta["Requirements"].pop("Runtime", None)
    if runtime is not None:
        meta["Requirements"]["Runtime"] = runtime
    (dst / "compiled.meta").write_text(json.dumps(meta))
    return dst


def test_onnxruntime_artifact_is_portable_and_says_which_onnxruntime_it_needs(ort_artifact):
    report, out = ort_artifact
    meta = _meta(out)
    # torch exports the CNN as ONNX IR 8, opset 17: onnxruntime 1.12 is the first to implement opset 17
    assert meta["Requirements"]["Runtime"] == {"onnxruntime": ">=1.12"}
    winner = report.winner()
    assert any("the device needs onnxruntime>=1.12" in n and "opset 17" in n for n in winner.notes), winner.notes
    assert "ORT_ENABLE_BASIC" in winner.command
    with tarfile.open(out / "model.tar.gz") as tar:
        model = onnx.load_model_from_string(tar.extractfile("compiled.onnx").read())
    # standard operators only (no com.microsoft fusions), and no opset imports an older onnxruntime would refuse
    assert {n.domain for n in model.graph.node} == {""}
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    report_json = json.loads((out / "report.json").read_text())
    notes = [n for c in report_json["candidates"] for n in c.get("notes", [])]
    assert any("onnxruntime>=1.12" in n for n in notes)


def test_newer_runtime_needed_is_refused_naming_package_versions_and_pip_command(ort_artifact, tmp_path):
    folder = _with_runtime(ort_artifact[1] / "model.tar.gz", tmp_path, {"onnxruntime": ">=99.0"})
    with pytest.raises(ArtifactError) as err:
        Model(folder)
    message = str(err.value)
    assert "onnxruntime>=99.0" in message and f"onnxruntime {version('onnxruntime')} is installed" in message
    assert "pip install 'onnxruntime>=99.0'" in message


def test_missing_runtime_is_refused_with_the_pip_command(ort_artifact, tmp_path):
    folder = _with_runtime(ort_artifact[1] / "model.tar.gz", tmp_path, {"kiln-no-such-runtime": "==1.0"})
    with pytest.raises(ArtifactError, match=r"needs kiln-no-such-runtime==1\.0, which is not installed here: "
                                            r"pip install 'kiln-no-such-runtime==1\.0'"):
        Model(folder)


def test_a_requirement_this_runtime_cannot_read_is_refused_not_guessed(ort_artifact, tmp_path):
    folder = _with_runtime(ort_artifact[1] / "model.tar.gz", tmp_path, {"onnxruntime": "~=1.12"})
    with pytest.raises(ArtifactError, match="not understood by this runtime.*upgrade modelkiln-runtime"):
        Model(folder)


def test_artifacts_without_the_field_load_as_before(ort_artifact, tmp_path):
    folder = _with_runtime(ort_artifact[1] / "model.tar.gz", tmp_path, None)
    (out,) = Model(folder).run(np.zeros(CNN_SHAPE, np.float32))
    assert out.shape == (1, 10)


@pytest.mark.parametrize("installed, requirement, ok", [
    ("1.16.3", ">=1.12", True), ("1.11.1", ">=1.12", False), ("1.12", ">=1.12.0", True),
    ("0.27.0.post1", "==0.27.*", True), ("0.28.0", "==0.27.*", False), ("3.13.0", "==3.13.0", True),
    ("3.13.1", "==3.13.0", False), ("2024.0.0-14509-34caeefd078", ">=2023.0", True), ("1.17.0rc1", ">=1.17", True),
    ("2.0.1", ">=1.19,==2.*", True),
])
def test_version_comparison(installed, requirement, ok):
    assert satisfies(installed, requirement) is ok


def test_release_numbers():
    assert release("0.27.0.post1") == (0, 27, 0) and release("2024.0.0-14509-34caeefd078") == (2024, 0, 0)
    assert release("1.17.0rc1") == (1, 17, 0)


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer)


@pytest.mark.parametrize("name, kind", [("../evil", tarfile.REGTYPE), ("/etc/evil", tarfile.REGTYPE),
                                        ("link", tarfile.SYMTYPE), ("fifo", tarfile.FIFOTYPE)])
def test_pythons_without_tar_filters_still_refuse_unsafe_members(tmp_path, name, kind):
    """The by-hand check that Pythons older than 3.8.17 (JetPack 5's 3.8.10) use instead of filter="data"."""
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
    with pytest.raises(ArtifactError, match="link, a special file or outside"):
        check_members(_tar_with(member), str(tmp_path))
    check_members(_tar_with(tarfile.TarInfo("compiled.meta")), str(tmp_path))  # a plain file passes


def test_a_file_onnxruntime_cannot_reload_fully_optimized_ships_unoptimized(tmp_path):
    """onnxruntime 1.31's MatMulAddFusion fails on its own basic-level output of a BERT graph (a tiny random one
    here): the artifact is then the converted model itself, which the device's onnxruntime optimizes at load."""
    import onnxruntime as ort
    import torch
    from transformers import BertConfig, BertModel

    from modelkiln.compiler.backends.onnxruntime import OnnxRuntimeBackend
    from modelkiln.targets import CompilerOptions
    from modelkiln.targets.catalog import entry_for_device

    class Bert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids).last_hidden_state

    ids = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        torch.onnx.export(Bert().eval(), (ids,), str(tmp_path / "bert.onnx"), input_names=["ids"], opset_version=17,
                          dynamo=False)
    (tmp_path / "work").mkdir()
    out = OnnxRuntimeBackend().compile(onnx.load(str(tmp_path / "bert.onnx")), entry_for_device("ml_c5"),
                                       CompilerOptions(), tmp_path / "work")
    assert out.command == "onnx.save(model, compiled.onnx)"
    assert any("ships unoptimized" in n for n in out.notes) and out.runtime == {"onnxruntime": ">=1.12"}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    feed = {"ids": ids.numpy()}
    shipped = ort.InferenceSession(str(tmp_path / "work" / "compiled.onnx"), options).run(None, feed)[0]
    np.testing.assert_allclose(shipped, ort.InferenceSession(str(tmp_path / "bert.onnx")).run(None, feed)[0],
                               rtol=1e-4, atol=1e-5)

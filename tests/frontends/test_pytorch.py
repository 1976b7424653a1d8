"""The PyTorch frontend: TorchScript in, ONNX out, torch as the reference; typed errors otherwise."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modelkiln.errors import CompilationError
from modelkiln.frontends.pytorch import load

from ..conftest import CNN_SHAPE, SmallCnn


def test_torchscript_is_exported_and_reference_is_torch(models, tmp_path):
    shutil.copy(models / "cnn.pth", tmp_path / "model.pth")
    model = load(tmp_path, "[[1, 3, 32, 32]]")
    assert [i.name for i in model.inputs] == ["input0"]
    assert model.outputs[0].shape == (1, 10)
    assert {n.op_type for n in model.onnx_model.graph.node} >= {"Conv", "Relu", "Gemm"}
    x = np.random.default_rng(1).standard_normal(CNN_SHAPE).astype(np.float32)
    want = torch.jit.load(str(models / "cnn.pth"))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(model.reference({"input0": x})[0], want, rtol=1e-6)
    assert model.converters["torch"] == "2.13.0"


def test_dict_form_names_inputs(models, tmp_path):
    shutil.copy(models / "cnn.pth", tmp_path / "model.pt")
    assert [i.name for i in load(tmp_path, "{'image': [1, 3, 32, 32]}").inputs] == ["image"]


def test_needs_data_input_config(models, tmp_path):
    shutil.copy(models / "cnn.pth", tmp_path / "model.pth")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, None)
    assert "DataInputConfig" in err.value.message and "[[1,3,224,224]]" in err.value.hint


def test_wrong_shape_is_reported_with_the_declared_shape(models, tmp_path):
    shutil.copy(models / "two.pth", tmp_path / "model.pth")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, "[[2, 8], [2, 7]]")
    assert err.value.stage == "convert" and "fails on inputs of the declared shapes" in err.value.message
    assert "input1 [2, 7]" in err.value.hint


def test_state_dict_is_refused_with_how_to_trace(tmp_path):
    torch.save(SmallCnn().state_dict(), tmp_path / "model.pth")
    with pytest.raises(CompilationError) as err:
        load(tmp_path, "[[1, 3, 32, 32]]")
    assert "torch.save() pickle" in err.value.message and "torch.jit.trace" in err.value.hint


def test_two_pth_files_are_refused(models, tmp_path):
    shutil.copy(models / "cnn.pth", tmp_path / "a.pth")
    shutil.copy(models / "cnn.pth", tmp_path / "b.pth")
    with pytest.raises(CompilationError, match="exactly one .pth or .pt"):
        load(tmp_path, "[[1, 3, 32, 32]]")


def test_unexportable_operator_is_named(tmp_path):
    class Fft(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).abs()

    torch.jit.trace(Fft(), torch.randn(1, 8)).save(str(tmp_path / "model.pth"))
    with pytest.raises(CompilationError) as err:
        load(tmp_path, "[[1, 8]]")
    assert err.value.stage == "convert" and "fft" in err.value.message.lower()


def test_dtype_option_types_untyped_inputs(tmp_path):
    """CompilerOptions DTYPE (here int64, AWS's "long") applies to inputs DataInputConfig leaves untyped."""
    emb = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Flatten())
    torch.jit.trace(emb.eval(), torch.zeros(1, 6, dtype=torch.long)).save(str(tmp_path / "model.pth"))
    model = load(tmp_path, "[[1, 6]]", "int64")
    assert model.inputs[0].dtype == "int64"
    ids = np.array([[0, 1, 2, 3, 4, 19]], np.int64)
    want = emb(torch.from_numpy(ids)).detach().numpy()
    np.testing.assert_allclose(model.reference({"input0": ids})[0], want)
    with pytest.raises(CompilationError):  # float ids are not what the embedding takes
        load(tmp_path, "[[1, 6]]", "float32")


@pytest.fixture(scope="module")
def exported_cnn(tmp_path_factory):
    """The small CNN as a torch.export archive (.pt2), and the module it came from."""
    torch.manual_seed(0)
    cnn = SmallCnn().eval()
    folder = tmp_path_factory.mktemp("pt2")
    torch.export.save(torch.export.export(cnn, (torch.randn(*CNN_SHAPE),)), str(folder / "model.pt2"))
    return folder, cnn


def test_torch_export_archive_compiles_with_its_own_shapes(exported_cnn, tmp_path):
    from modelkiln.compiler import CompileJob, compile_job
    from modelkiln.runtime import Model

    folder, cnn = exported_cnn
    model = load(folder, None)  # the archive records its shapes: no DataInputConfig needed
    assert [(i.name, i.shape, i.dtype) for i in model.inputs] == [("input0", CNN_SHAPE, "float32")]
    assert "torch.export" in model.notes[0]
    report = compile_job(CompileJob(model=folder / "model.pt2", framework="PYTORCH", output_dir=tmp_path,
                                    data_input_config='{"image": [1, 3, 32, 32]}', target_device="ml_c5",
                                    compiler_options='{"kiln-backend": "onnxruntime"}'))
    assert report.winner() is not None and report.winner().status == "selected"
    x = np.random.default_rng(2).standard_normal(CNN_SHAPE).astype(np.float32)
    got = Model(tmp_path / "model.tar.gz").run({"image": x})[0]
    np.testing.assert_allclose(got, cnn(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-6)


def test_torch_export_archive_refuses_other_shapes_and_other_files(exported_cnn, tmp_path):
    folder, _ = exported_cnn
    with pytest.raises(CompilationError, match=r"exported for \[\[1, 3, 32, 32\]\]"):
        load(folder, "[[1, 3, 64, 64]]")
    (tmp_path / "model.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CompilationError, match="not a torch.export archive") as caught:
        load(tmp_path, None)
    assert "torch.export.save" in caught.value.hint

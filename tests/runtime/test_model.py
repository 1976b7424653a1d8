"""The runtime: load an artifact (tar or folder), run it, refuse what it cannot run, DLR's API."""
from __future__ import annotations

import json
import sys
import tarfile
from importlib.metadata import version

import numpy as np
import onnxruntime as ort
import pytest

from modelkiln.runtime import ArtifactError, DLRModel, Model

from ..conftest import CNN_SHAPE


@pytest.fixture(scope="module")
def x_and_expected(models):
    x = np.random.default_rng(7).standard_normal(CNN_SHAPE).astype(np.float32)
    expected = ort.InferenceSession(str(models / "cnn.onnx")).run(None, {"data": x})[0]
    return x, expected


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "iree"])
def test_every_backend_artifact_loads_and_runs(models, tmp_path, backend, x_and_expected):
    from ..conftest import compile_cnn

    compile_cnn(models, tmp_path, target_device="ml_c5", compiler_options=json.dumps({"kiln-backend": backend}))
    x, expected = x_and_expected
    # the backend runtime the device needs: onnxruntime/OpenVINO from the file's opsets, IREE the very release
    needs = {"onnxruntime": {"onnxruntime": ">=1.12"}, "openvino": {"openvino": ">=2022.1"},
             "iree": {"iree-base-runtime": f"=={version('iree-base-runtime')}"}}[backend]
    for threads in (1, 2):
        model = Model(tmp_path / "model.tar.gz", threads=threads)
        assert model.backend == backend and model.meta["Requirements"]["Runtime"] == needs
        (out,) = model.run(x)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def test_names_shapes_dtypes_and_input_forms(x86_artifact, x_and_expected):
    _, out = x86_artifact
    model = Model(out / "model.tar.gz")
    assert model.input_names == ["data"] and model.input_shapes == [CNN_SHAPE]
    assert model.input_dtypes == ["float32"] and model.output_shapes == [(1, 10)]
    assert model.output_dtypes == ["float32"] and model.output_names == ["prob"]
    x, expected = x_and_expected
    fortran = np.asfortranarray(x)
    for inputs in (x, [x], (x,), iter([x]), {"data": x}, x.astype(np.float64), [fortran], [x.tolist()]):
        np.testing.assert_allclose(model.run(inputs)[0], expected, rtol=1e-4, atol=1e-6)


def test_extracted_folder_loads_too(x86_artifact, tmp_path, x_and_expected):
    _, out = x86_artifact
    with tarfile.open(out / "model.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    x, expected = x_and_expected
    np.testing.assert_allclose(Model(tmp_path).run(x)[0], expected, rtol=1e-4, atol=1e-6)


def test_bad_inputs_are_refused_with_the_expected_form(x86_artifact):
    model = Model(x86_artifact[1] / "model.tar.gz")
    with pytest.raises(ArtifactError, match=r"must have shape \[1, 3, 32, 32\], got \[1, 3, 16, 16\]"):
        model.run(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ArtifactError, match=r"unknown \['image'\], missing \['data'\]"):
        model.run({"image": np.zeros(CNN_SHAPE, np.float32)})
    with pytest.raises(ArtifactError, match="must be float32, got complex64"):
        model.run(np.zeros(CNN_SHAPE, np.complex64))
    with pytest.raises(ArtifactError, match=r"takes 1 inputs \['data'\], got 2"):
        model.run([np.zeros(CNN_SHAPE, np.float32)] * 2)
    with pytest.raises(ArtifactError, match=r"must have shape \[1, 3, 32, 32\], got \[3, 32, 32\]"):
        model.run([np.zeros(CNN_SHAPE[1:], np.float32)])


def test_artifact_for_another_arch_is_refused_naming_both(aarch64_artifact):
    with pytest.raises(ArtifactError) as err:
        Model(aarch64_artifact[1] / "model.tar.gz")
    assert "aarch64 (rasp4b)" in str(err.value) and "this machine is x86_64" in str(err.value)


def _with_requirements(src, dst, **changes):
    with tarfile.open(src) as tar:
        tar.extractall(dst, filter="data")
    meta = json.loads((dst / "compiled.meta").read_text())
    meta["Requirements"].update(changes)
    (dst / "compiled.meta").write_text(json.dumps(meta))
    return dst


def test_device_type_mismatch_is_refused_like_dlr(x86_artifact, tmp_path):
    folder = _with_requirements(x86_artifact[1] / "model.tar.gz", tmp_path, TargetDeviceType="gpu")
    with pytest.raises(ArtifactError, match='requires device type "gpu" but user gave "cpu"'):
        Model(folder)
    with pytest.raises(ArtifactError, match='requires device type "cpu" but user gave "gpu"'):
        DLRModel(str(x86_artifact[1] / "model.tar.gz"), dev_type="gpu")


def test_missing_cpu_features_are_refused(x86_artifact, tmp_path):
    folder = _with_requirements(x86_artifact[1] / "model.tar.gz", tmp_path, CpuFlags=["imaginary_isa"],
                                Mcpu="future-cpu")
    with pytest.raises(ArtifactError, match="needs CPU features imaginary_isa"):
        Model(folder)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        Model(tmp_path / "nope.tar.gz")
    (tmp_path / "x.bin").write_bytes(b"plain")
    with pytest.raises(ArtifactError, match="neither"):
        Model(tmp_path / "x.bin")
    with pytest.raises(ArtifactError, match="no compiled.meta"):
        Model(tmp_path)


def test_dlr_api(x86_artifact, x_and_expected):
    model = DLRModel(str(x86_artifact[1] / "model.tar.gz"), "cpu", 0)
    assert model.get_input_names() == ["data"] and model.get_output_names() == ["prob"]
    assert model.get_input_dtypes() == ["float32"] and model.get_output_dtype(0) == "float32"
    assert model.get_input_shape(0) == CNN_SHAPE and model.get_output_shape(0) == (1, 10)
    assert model.has_metadata() and model.get_version() == "0.1.0"
    x, expected = x_and_expected
    np.testing.assert_allclose(model.run({"data": x})[0], expected, rtol=1e-4, atol=1e-6)


def test_runtime_imports_only_the_backend_it_needs(x86_artifact, tmp_path):
    """A device installs one backend's runtime: loading an IREE artifact must not import the others."""
    import subprocess

    code = (
        "import sys; from modelkiln.runtime import Model; import numpy as np\n"
        f"m = Model({str(x86_artifact[1] / 'model.tar.gz')!r}); m.run(np.zeros((1,3,32,32), np.float32))\n"
        "print(sorted(k for k in ('torch', 'onnx', 'onnxruntime', 'openvino', 'iree.runtime', 'iree.compiler')"
        " if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)
    backend = Model(x86_artifact[1] / "model.tar.gz").backend
    expected = {"onnxruntime": ["onnxruntime"], "openvino": ["openvino"], "iree": ["iree.runtime"]}[backend]
    assert loaded == expected

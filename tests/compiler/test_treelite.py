"""Tree models through the real pipeline: Treelite + TL2cgen libraries for x86-64, aarch64 (run under
qemu-user) and armv7, the ONNX-ML twin on onnxruntime, and the artifact run with Kiln's runtime."""
from __future__ import annotations

import json
import tarfile

import joblib
import numpy as np
import pytest
import xgboost as xgb
from onnx import TensorProto
from onnx.helper import make_node, make_tensor_value_info
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.compiler.verify import embedded_elf_arches
from modelkiln.errors import CompilationError
from modelkiln.runtime import ArtifactError, DLRModel, Model

from ..conftest import onnx_model, tar_gz


def rows(n: int, seed: int = 1, features: int = 6) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, features)).astype(np.float32)
    x[::7, 2] = np.nan  # missing values take each tree's default branch
    return x


@pytest.fixture(scope="module")
def data():
    x = rows(400, seed=2)
    binary = (np.nan_to_num(x[:, 0]) + x[:, 1] > 0).astype(int)
    return x, binary, binary + (x[:, 3] > 0.6)


def compile_file(path, framework, out, **kwargs):
    archive = tar_gz(path.with_name(path.name + ".tar.gz"), path)
    return compile_job(CompileJob(model=archive, framework=framework, output_dir=out, **kwargs))


def test_xgboost_json_on_x86_every_eligible_backend(tmp_path, data):
    x, _, three = data
    bst = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 4}, xgb.DMatrix(x, label=three), 15)
    bst.save_model(str(tmp_path / "model.json"))
    report = compile_file(tmp_path / "model.json", "XGBOOST", tmp_path / "out", target_device="ml_c5")
    by_name = {c.backend: c for c in report.candidates}
    assert list(by_name) == ["treelite", "onnxruntime", "openvino", "iree"]  # the catalog's tree order
    for name in ("treelite", "onnxruntime"):
        assert by_name[name].status in ("selected", "passed") and by_name[name].check.ran_on == "host (x86_64)"
        assert by_name[name].check.max_rel_err <= 1e-5 and by_name[name].latency_ms > 0
    for name in ("openvino", "iree"):
        assert by_name[name].status == "skipped" and "TreeEnsembleClassifier" in by_name[name].reason
    assert "-march=skylake-avx512" in by_name["treelite"].notes[0]
    assert report.inputs == [{"name": "data", "shape": [-1, 6], "dtype": "float32"}]
    assert report.outputs == [{"name": "predictions", "shape": [-1, 3], "dtype": "float32"}]
    model = Model(tmp_path / "out" / "model.tar.gz")
    for n in (1, 1000):
        fresh = rows(n)
        np.testing.assert_allclose(model.run(fresh)[0], bst.predict(xgb.DMatrix(fresh)), rtol=1e-5, atol=1e-6)


def test_pickled_classifier_pinned_to_treelite_runs_in_the_runtime(tmp_path, data):
    x, binary, _ = data
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=4).fit(x, binary)
    joblib.dump(clf, tmp_path / "model.joblib")
    out = tmp_path / "out"
    report = compile_file(tmp_path / "model.joblib", "XGBOOST", out, target_device="ml_c5",
                          data_input_config='{"data": [1, 6]}', compiler_options='{"kiln-backend": "treelite"}')
    assert [c.backend for c in report.candidates] == ["treelite"] and report.selected == "treelite"
    with tarfile.open(out / "model.tar.gz") as tar:
        assert set(tar.getnames()) == {"compiled.so", "compiled.meta", "report.json"}
        meta = json.load(tar.extractfile("compiled.meta"))
    assert meta["Backend"]["Name"] == "treelite" and meta["Backend"]["Runtime"].startswith("numpy==")
    assert meta["Requirements"]["Arch"] == "x86_64" and meta["Source"]["Framework"] == "XGBOOST"
    fresh = rows(5000)
    expected = clf.predict_proba(fresh)[:, 1]
    for threads in (1, 2):
        got = Model(out / "model.tar.gz", threads=threads).run({"data": fresh})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    dlr = DLRModel(str(out / "model.tar.gz"))
    assert dlr.get_input_shape(0) == (-1, 6) and dlr.get_output_shape(0) == (-1,)
    with pytest.raises(ArtifactError, match=r"must have shape \[-1, 6\], got \[3, 5\]"):
        dlr.run(np.zeros((3, 5), np.float32))


def test_aarch64_library_is_cross_compiled_and_verified_under_qemu(tmp_path, data):
    x, _, _ = data
    bst = xgb.train({"objective": "reg:squarederror", "max_depth": 4}, xgb.DMatrix(x, label=2 * x[:, 0]), 10)
    bst.save_model(str(tmp_path / "model.ubj"))
    out = tmp_path / "out"
    report = compile_file(tmp_path / "model.ubj", "XGBOOST", out, target_device="rasp4b")
    winner = report.winner()
    assert winner.backend == "treelite" and winner.check.status == "verified"
    assert "qemu" in winner.check.ran_on and "aarch64" in winner.check.ran_on
    assert winner.check.max_rel_err <= 1e-5 and winner.latency_ms is None
    assert "aarch64-linux-gnu-gcc" in winner.command and "-mcpu=cortex-a72" in winner.command
    with tarfile.open(out / "model.tar.gz") as tar:
        library = tar.extractfile("compiled.so").read()
    assert embedded_elf_arches(library) == {("aarch64", 2)}
    with pytest.raises(ArtifactError, match="built for aarch64"):
        Model(out / "model.tar.gz")


def test_armv7_is_checked_by_a_host_twin_and_its_elf_class(tmp_path, data):
    x, binary, _ = data
    joblib.dump(RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(np.nan_to_num(x), binary),
                tmp_path / "forest.pkl")
    report = compile_file(tmp_path / "forest.pkl", "SKLEARN", tmp_path / "out", target_device="rasp3b")
    winner = report.winner()
    assert winner.backend == "treelite" and winner.check.status == "checked: host twin"
    assert "arm ELF32" in winner.check.detail and winner.check.max_rel_err <= 1e-6


def test_sklearn_forest_and_pipeline_on_x86(tmp_path, data):
    x, binary, three = data
    x = np.nan_to_num(x)
    forest = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, three)
    joblib.dump(forest, tmp_path / "forest.joblib")
    report = compile_file(tmp_path / "forest.joblib", "SKLEARN", tmp_path / "f", target_device="ml_c5")
    assert {c.backend: c.status for c in report.candidates}["treelite"] in ("selected", "passed")
    fresh = np.nan_to_num(rows(300))
    np.testing.assert_allclose(Model(tmp_path / "f" / "model.tar.gz").run(fresh)[0], forest.predict_proba(fresh),
                               rtol=1e-5, atol=1e-6)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, binary)
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    report = compile_file(tmp_path / "pipe.joblib", "SKLEARN", tmp_path / "p", target_device="ml_c5")
    by_name = {c.backend: c for c in report.candidates}
    assert list(by_name) == ["onnxruntime", "openvino", "iree"]  # not a tree model: the neural-net order
    assert report.selected == "onnxruntime"
    assert "LinearClassifier" in by_name["openvino"].reason and by_name["iree"].status == "skipped"
    (proba,) = Model(tmp_path / "p" / "model.tar.gz").run(fresh)
    np.testing.assert_allclose(proba, pipe.predict_proba(fresh), rtol=1e-5, atol=1e-6)


def test_a_binary_classifier_gives_both_columns_whichever_route_compiled_it(tmp_path, data):
    """Boosted binary trees compute P(class 1) only; the artifact still returns predict_proba's [N, 2]."""
    x, binary, _ = data
    x = np.nan_to_num(x)
    fresh = np.nan_to_num(rows(50))
    boosted = GradientBoostingClassifier(n_estimators=8, max_depth=3, random_state=0).fit(x, binary)
    joblib.dump(boosted, tmp_path / "gb.joblib")
    report = compile_file(tmp_path / "gb.joblib", "SKLEARN", tmp_path / "gb", target_device="ml_c5")
    assert report.outputs == [{"name": "probabilities", "shape": [-1, 2], "dtype": "float64"}]
    by_name = {c.backend: c for c in report.candidates}
    assert by_name["treelite"].check.ran and by_name["onnxruntime"].check.ran  # both routes give [N, 2]
    for backend in ("treelite", "onnxruntime"):
        compile_file(tmp_path / "gb.joblib", "SKLEARN", tmp_path / backend, target_device="ml_c5",
                     compiler_options=f'{{"kiln-backend": "{backend}"}}')
        (proba,) = Model(tmp_path / backend / "model.tar.gz").run(fresh)
        np.testing.assert_allclose(proba, boosted.predict_proba(fresh), rtol=1e-5, atol=1e-6)


def test_treelite_pinned_for_a_neural_net_says_why(tmp_path):
    path = onnx_model(tmp_path / "relu.onnx", [make_node("Relu", ["x"], ["y"])],
                      [make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                      [make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(CompilationError) as err:
        compile_file(path, "ONNX", tmp_path / "out", target_device="ml_c5",
                     compiler_options='{"kiln-backend": "treelite"}')
    assert err.value.stage == "verify" and "compiles tree ensembles only" in err.value.message


def test_catalog_lists_treelite_first_for_trees_and_pins_it():
    from modelkiln.compiler.backends import BACKENDS
    from modelkiln.targets import CompilerOptions, resolve
    from modelkiln.targets.catalog import load_catalog

    from modelkiln.compiler.backends.treelite import COMPILERS

    for name, arch in load_catalog()["arch"].items():
        assert set(arch["tree_backends"]) <= set(BACKENDS), name
        # treelite first wherever a GCC for the arch is installed (i686: none, its trees are refused)
        assert (arch["tree_backends"][0] == "treelite") == (name in COMPILERS), name
    for device in ("ml_c5", "rasp4b", "rasp3b"):
        target = resolve(CompilerOptions(), device=device)
        assert target.backends_for(trees=True)[0] == "treelite" and "treelite" not in target.backends
    pinned = resolve(CompilerOptions(backend="treelite"), device="ml_c5")
    assert pinned.backends == pinned.tree_backends == ("treelite",)

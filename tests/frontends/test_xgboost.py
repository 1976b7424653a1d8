"""The XGBoost frontend: every file format it takes, read into Treelite and checked against xgboost's predict."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
import treelite
import xgboost as xgb

from modelkiln.errors import CompilationError
from modelkiln.frontends.xgboost import load

DATA = Path(__file__).parent / "data"
TASKS = {
    "regression": ({"objective": "reg:squarederror"}, ()),
    "binary": ({"objective": "binary:logistic"}, ()),
    "multiclass": ({"objective": "multi:softprob", "num_class": 3}, (3,)),
}


def training_data(rows: int = 400, features: int = 6) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Synthetic rows and a label per task."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    binary = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    return x, {"regression": 2 * x[:, 0] - x[:, 2] ** 2, "binary": binary,
               "multiclass": binary + (x[:, 3] > 0.7)}


def booster(task: str) -> xgb.Booster:
    x, labels = training_data()
    params, _ = TASKS[task]
    return xgb.train({**params, "max_depth": 4, "eta": 0.3}, xgb.DMatrix(x, label=labels[task]), 12)


def check_against_xgboost(model, predict, row_shape) -> None:
    """The reference, Treelite's interpreter and xgboost agree on fresh rows, some values missing."""
    x = np.random.default_rng(11).standard_normal((50, 6)).astype(np.float32)
    x[::5, 1] = np.nan
    expected = predict(x)
    (ref,) = model.reference({"data": x})
    assert ref.shape == (50, *row_shape)
    np.testing.assert_allclose(ref, expected.reshape(ref.shape), rtol=1e-6)
    gtil = treelite.gtil.predict(model.tree_model, x).reshape(ref.shape)
    np.testing.assert_allclose(gtil, expected.reshape(ref.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("fmt", ["json", "ubj"])
def test_json_and_ubjson_files(tmp_path, task, fmt):
    bst = booster(task)
    bst.save_model(str(tmp_path / f"model.{fmt}"))
    model = load(tmp_path, None)
    assert [(i.name, i.shape, i.dtype) for i in model.inputs] == [("data", (-1, 6), "float32")]
    assert model.outputs[0].shape == (-1, *TASKS[task][1])
    assert model.framework == "XGBOOST" and "onnx-ml" in model.forms and "treelite" in model.forms
    if fmt == "json":
        assert model.framework_version == xgb.__version__
    check_against_xgboost(model, lambda x: bst.predict(xgb.DMatrix(x)), TASKS[task][1])


def test_pickled_booster_and_joblib_classifier_and_regressor(tmp_path):
    x, labels = training_data()
    bst = booster("binary")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.pkl").write_bytes(pickle.dumps(bst))
    check_against_xgboost(load(tmp_path / "a", None), lambda v: bst.predict(xgb.DMatrix(v)), ())
    clf = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(x, labels["multiclass"])
    joblib.dump(clf, tmp_path / "b.joblib")
    (tmp_path / "b").mkdir()
    shutil.move(tmp_path / "b.joblib", tmp_path / "b" / "model.joblib")
    check_against_xgboost(load(tmp_path / "b", '{"data": [1, 6]}'), clf.predict_proba, (3,))
    reg = xgb.XGBRegressor(n_estimators=8, max_depth=3).fit(x, labels["regression"])
    (tmp_path / "c").mkdir()
    joblib.dump(reg, tmp_path / "c" / "model.joblib")
    check_against_xgboost(load(tmp_path / "c", "[10, 6]"), reg.predict, ())


def test_legacy_1x_binary_is_read_by_treelite(tmp_path):
    """A real XGBoost 1.7.6 binary (.model) written by xgboost 1.7 itself (see data/README.md): XGBoost 3
    cannot read it, Treelite can, and its predictions match those xgboost 1.7.6 recorded."""
    shutil.copy(DATA / "xgb_1.7.6_binary.model", tmp_path / "model.model")
    recorded = np.load(DATA / "xgb_1.7.6_binary.npz")
    model = load(tmp_path, None)
    assert model.framework_version == "1.x" and any("legacy" in n for n in model.notes)
    assert model.onnx_model is None  # onnxmltools needs XGBoost to read the file
    (ref,) = model.reference({"data": recorded["x"]})
    np.testing.assert_allclose(ref.reshape(recorded["predictions"].shape), recorded["predictions"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("config, words", [
    ('{"data": [1, 5]}', "rows of 6 features"),
    ("[4, 6, 1]", "shape [4, 6, 1]"),
    ('{"a": [1, 6], "b": [1, 6]}', "one input matrix"),
])
def test_data_input_config_must_match_the_feature_count(tmp_path, config, words):
    booster("regression").save_model(str(tmp_path / "model.json"))
    with pytest.raises(CompilationError) as err:
        load(tmp_path, config)
    assert words in err.value.message and "[1, 6]" in err.value.hint


def test_file_errors_say_what_to_change(tmp_path):
    with pytest.raises(CompilationError, match="no .json or .ubj"):
        load(tmp_path, None)
    booster("regression").save_model(str(tmp_path / "a.json"))
    booster("binary").save_model(str(tmp_path / "b.ubj"))
    with pytest.raises(CompilationError, match="exactly one .* the archive holds 2: a.json, b.ubj"):
        load(tmp_path, None)
    for name, data, words in [("m.pkl", b"not a pickle", "not a readable pickle"),
                              ("m.joblib", pickle.dumps({"weights": [1, 2]}), "holds a builtins.dict"),
                              ("m.json", b'{"learner": 1}', "XGBoost cannot read m.json")]:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_bytes(data)
        with pytest.raises(CompilationError) as err:
            load(folder, None)
        assert err.value.stage == "convert" and words in err.value.message and err.value.hint


def test_multi_softmax_is_refused_naming_the_objective(tmp_path):
    x, labels = training_data()
    bst = xgb.train({"objective": "multi:softmax", "num_class": 3}, xgb.DMatrix(x, label=labels["multiclass"]), 3)
    bst.save_model(str(tmp_path / "m.json"))
    model = load(tmp_path, None)
    with pytest.raises(CompilationError, match="multi:softmax"):
        model.reference({"data": x[:4]})

"""The scikit-learn frontend: tree ensembles to Treelite, other estimators and pipelines to ONNX via skl2onnx."""
from __future__ import annotations

import pickle

import joblib
import numpy as np
import onnxruntime as ort
import pytest
import treelite
from sklearn import ensemble
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelPropagation

from modelkiln.errors import CompilationError
from modelkiln.frontends.sklearn import load

ENSEMBLES = {
    "RandomForest": dict(n_estimators=6, max_depth=4),
    "ExtraTrees": dict(n_estimators=6, max_depth=4),
    "GradientBoosting": dict(n_estimators=6, max_depth=3),
    "HistGradientBoosting": dict(max_iter=6, max_depth=3),
}


def training_data(rows: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, a binary label, a 3-class label, a regression target."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((rows, 5)).astype(np.float32)
    binary = (x[:, 0] - x[:, 1] > 0).astype(int)
    return x, binary, binary + (x[:, 2] > 0.8), 3 * x[:, 0] + x[:, 3] ** 2


def saved(folder, estimator, name="model.joblib"):
    folder.mkdir(exist_ok=True)
    joblib.dump(estimator, folder / name)
    return folder


@pytest.mark.parametrize("kind", ENSEMBLES)
def test_tree_ensembles_go_to_treelite(tmp_path, kind):
    x, binary, three, target = training_data()
    fresh = np.random.default_rng(9).standard_normal((40, 5)).astype(np.float32)
    cases = [(getattr(ensemble, f"{kind}Classifier"), binary, "predict_proba"),
             (getattr(ensemble, f"{kind}Classifier"), three, "predict_proba"),
             (getattr(ensemble, f"{kind}Regressor"), target, "predict")]
    for i, (cls, label, method) in enumerate(cases):
        estimator = cls(random_state=0, **ENSEMBLES[kind]).fit(x, label)
        model = load(saved(tmp_path / str(i), estimator), None)
        assert model.tree_model is not None and model.inputs[0].shape == (-1, 5)
        expected = getattr(estimator, method)(fresh)
        (ref,) = model.reference({"data": fresh})
        # one contract: predict_proba's columns for every classifier (binary too), predict's shape otherwise
        name = "probabilities" if method == "predict_proba" else "predictions"
        assert [(o.name, o.shape) for o in model.outputs] == [(name, (-1, *expected.shape[1:]))]
        np.testing.assert_allclose(ref, expected, rtol=1e-6, atol=1e-7)
        gtil = treelite.gtil.predict(model.tree_model, fresh)
        if gtil.size == fresh.shape[0] and expected.ndim == 2:  # binary boosted trees give P(class 1) only
            expected = expected[:, 1]
        np.testing.assert_allclose(gtil.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
        assert model.onnx_model is not None, model.notes  # skl2onnx gives a twin for onnxruntime


def test_pipeline_goes_through_skl2onnx(tmp_path):
    x, binary, _, _ = training_data()
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, binary)
    model = load(saved(tmp_path, pipe, "model.pkl"), '{"features": [1, 5]}')
    assert model.tree_model is None and model.forms == {"onnx-ml"}
    assert [(o.name, o.shape) for o in model.outputs] == [("probabilities", (-1, 2))]  # as a forest's
    assert [i.name for i in model.inputs] == ["features"]
    session = ort.InferenceSession(model.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (proba,) = session.run(None, {"features": x[:20]})
    np.testing.assert_allclose(proba, pipe.predict_proba(x[:20]), rtol=1e-5, atol=1e-6)
    (ref,) = model.reference({"features": x[:20]})
    np.testing.assert_allclose(ref, proba, rtol=1e-5, atol=1e-6)


def test_regressors_give_predictions_by_either_route(tmp_path):
    x, _, _, target = training_data()
    for i, estimator in enumerate([ensemble.RandomForestRegressor(n_estimators=5, random_state=0),
                                   LinearRegression()]):
        model = load(saved(tmp_path / str(i), estimator.fit(x, target)), None)
        assert [(o.name, o.shape) for o in model.outputs] == [("predictions", (-1,))]
        np.testing.assert_allclose(model.reference({"data": x[:7]})[0], estimator.predict(x[:7]), rtol=1e-5,
                                   atol=1e-5)


def test_unsupported_estimator_is_named(tmp_path):
    x, binary, _, _ = training_data(60)
    with pytest.raises(CompilationError) as err:
        load(saved(tmp_path, LabelPropagation().fit(x, binary)), None)
    assert "LabelPropagation" in err.value.message and "tree ensembles" in err.value.hint


def test_errors_for_files_pickles_and_feature_counts(tmp_path):
    with pytest.raises(CompilationError, match="no .joblib or .pkl"):
        load(tmp_path, None)
    x, binary, _, _ = training_data(60)
    forest = ensemble.RandomForestClassifier(n_estimators=2).fit(x, binary)
    saved(tmp_path / "two", forest, "a.joblib")
    saved(tmp_path / "two", forest, "b.pkl")
    with pytest.raises(CompilationError, match="the archive holds 2"):
        load(tmp_path / "two", None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "m.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CompilationError, match="not a readable pickle"):
        load(tmp_path / "bad", None)
    (tmp_path / "obj").mkdir()
    (tmp_path / "obj" / "m.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CompilationError, match="holds a list"):
        load(tmp_path / "obj", None)
    with pytest.raises(CompilationError) as err:
        load(saved(tmp_path / "one", forest), '{"data": [1, 7]}')
    assert "rows of 5 features" in err.value.message
    unfitted = tmp_path / "unfitted"
    with pytest.raises(CompilationError, match="not fitted"):
        load(saved(unfitted, LogisticRegression()), None)

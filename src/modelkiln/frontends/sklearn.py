"""scikit-learn frontend: one pickle/joblib file. Tree ensembles (RandomForest, ExtraTrees, GradientBoosting,
HistGradientBoosting; classifier or regressor) go to Treelite, with an ONNX twin from skl2onnx; every other
estimator or Pipeline goes through skl2onnx to ONNX, the neural nets' path. Reference: the estimator's
own predict_proba (classifiers) or predict.

One output contract, whichever route compiles the model: a classifier gives `probabilities` [N, classes]
(predict_proba's columns, in `classes_` order; binary classifiers too), a regressor `predictions` [N] (or
[N, targets]); other estimators their first skl2onnx output.

Pickles are code: they are opened only in the process that compiles, which Kiln's server runs as a
sandboxed subprocess (executor/sandbox.py); never call this loader in the API process.
To support another tree ensemble: Treelite's `treelite.sklearn.import_model` must take it; add its class
name to TREE_ENSEMBLES.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import treelite
from sklearn.base import is_classifier, is_regressor

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one
from modelkiln.frontends.trees import ANY_ROWS, adapt_onnx, input_spec, output_spec, shaped_reference

PROBABILITIES, PREDICTIONS = "probabilities", "predictions"

SUFFIXES = (".joblib", ".pkl", ".pickle", ".sav")
TREE_ENSEMBLES = {
    f"{kind}{task}" for kind in ("RandomForest", "ExtraTrees", "GradientBoosting", "HistGradientBoosting")
    for task in ("Classifier", "Regressor")
}
SAVE_HINT = "save the fitted estimator with joblib.dump(estimator, 'model.joblib') and put it in model.tar.gz."
OPSETS = {"": 17, "ai.onnx.ml": 3}


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Unpickle the estimator and convert it: tree ensembles to Treelite, the rest to ONNX with skl2onnx."""
    path = exactly_one(model_dir, SUFFIXES, "scikit-learn")
    estimator = _unpickle(path)
    n_features = getattr(estimator, "n_features_in_", None)
    if not hasattr(estimator, "predict") and not hasattr(estimator, "transform"):
        raise CompilationError("convert", f"{path.name} holds a {_name(estimator)}, not a fitted scikit-learn "
                               "estimator or Pipeline.", SAVE_HINT)
    if n_features is None:
        raise CompilationError("convert", f"the {_name(estimator)} in {path.name} is not fitted (no n_features_in_).",
                               "fit the estimator before saving it.")
    spec = input_spec(data_input_config, int(n_features), "scikit-learn")
    versions = {"scikit-learn": sklearn.__version__}
    saved = getattr(estimator, "__getstate__", lambda: {})().get("_sklearn_version")
    if type(estimator).__name__ in TREE_ENSEMBLES:
        return _trees(estimator, spec, versions, saved)
    return _onnx_path(estimator, spec, versions, saved)


def _unpickle(path: Path) -> Any:
    import joblib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # InconsistentVersionWarning: the version is reported instead
            return joblib.load(path)
    except Exception as exc:
        raise CompilationError("convert", f"{path.name} is not a readable pickle/joblib file "
                               f"({exc.__class__.__name__}: {str(exc)[:200]}).", SAVE_HINT) from None


def _trees(estimator, spec: TensorSpec, versions: dict, saved: str | None) -> ConvertedModel:
    try:
        tree_model = treelite.sklearn.import_model(estimator)
    except Exception as exc:
        raise CompilationError("convert", f"Treelite cannot import the {_name(estimator)}: {str(exc)[:300]}",
                               "use a supported ensemble or convert the model to ONNX yourself.") from None
    out, reference, what = _tree_contract(estimator, tree_model, spec)
    notes = [f"{_name(estimator)} compiled from Treelite's import; the reference is {what}."]
    onnx_model = None
    try:
        converted = _skl2onnx(estimator, spec)
        onnx_model = adapt_onnx(converted, converted.graph.output[-1].name, out, spec.name)
        notes.append("ONNX-ML twin converted by skl2onnx.")
    except Exception as exc:  # a converter gap only removes the ONNX candidates
        notes.append(f"No ONNX twin: skl2onnx could not convert it ({str(exc).splitlines()[0][:200]}).")
    return ConvertedModel(
        onnx_model=onnx_model, inputs=[spec], outputs=[out], reference=reference, framework="SKLEARN",
        framework_version=saved or sklearn.__version__, converters={**versions, "treelite": treelite.__version__},
        notes=notes, tree_model=tree_model,
    )


def _tree_contract(estimator, tree_model: treelite.Model, spec: TensorSpec):
    """Kiln's scikit-learn output for a tree ensemble: `probabilities` [N, classes] (predict_proba, also for
    binary classifiers, whose compiled trees give P(class 1) and the runtime adds column 0), else
    `predictions` [N] or [N, targets] (predict). Returns (output spec, reference, what the reference is)."""
    if not is_classifier(estimator):
        what = f"{_name(estimator)}.predict"
        return output_spec(tree_model), shaped_reference(estimator.predict, tree_model, spec.name, what), what
    dtype, classes = np.dtype(tree_model.output_type), len(estimator.classes_)
    out = TensorSpec(PROBABILITIES, (ANY_ROWS, classes), dtype.name)

    def reference(feeds: Feeds) -> list[np.ndarray]:
        return [np.asarray(estimator.predict_proba(feeds[spec.name])).reshape(-1, classes).astype(dtype)]

    return out, reference, f"{_name(estimator)}.predict_proba"


def _onnx_path(estimator, spec: TensorSpec, versions: dict, saved: str | None) -> ConvertedModel:
    import skl2onnx

    try:
        model = _skl2onnx(estimator, spec)
    except Exception as exc:
        raise CompilationError(
            "convert", f"skl2onnx cannot convert the {_name(estimator)}: {str(exc).strip().splitlines()[0][:300]}",
            "Kiln compiles scikit-learn tree ensembles and what skl2onnx converts (linear models, scalers, "
            "encoders, pipelines of them); replace the unsupported step.") from None
    model.ir_version = min(model.ir_version, 10)
    names = [o.name for o in model.graph.output]

    def run(x: np.ndarray) -> list[np.ndarray]:
        # float64, as the estimator was fitted: some (KMeans) refuse float32 rows
        x = x.astype(np.float64)
        if is_classifier(estimator):
            return [np.asarray(estimator.predict_proba(x)).astype(np.float32)]
        out = estimator.predict(x) if hasattr(estimator, "predict") else estimator.transform(x)
        return [np.asarray(out).reshape(x.shape[0], -1).astype(np.float32)]

    sample = run(np.zeros((1, spec.shape[1]), np.float32))[0]
    if is_classifier(estimator):  # the same contract as the tree ensembles: probabilities only
        out, what = TensorSpec(PROBABILITIES, (ANY_ROWS, sample.shape[1]), "float32"), "predict_proba"
    elif is_regressor(estimator):
        row = () if sample.shape[1] == 1 else (sample.shape[1],)
        out, what = TensorSpec(PREDICTIONS, (ANY_ROWS, *row), "float32"), "predict"
    else:
        out, what = TensorSpec(names[0], (ANY_ROWS, sample.shape[1]), "float32"), (
            "predict" if hasattr(estimator, "predict") else "transform")
    source = "probabilities" if out.name == PROBABILITIES and "probabilities" in names else names[0]
    model = adapt_onnx(model, source, out, spec.name)

    def reference(feeds: Feeds) -> list[np.ndarray]:
        return [run(feeds[spec.name])[0].reshape(feeds[spec.name].shape[0], *out.shape[1:])]

    return ConvertedModel(
        onnx_model=model, inputs=[spec], outputs=[out], reference=reference, framework="SKLEARN",
        framework_version=saved or sklearn.__version__, converters={**versions, "skl2onnx": skl2onnx.__version__},
        notes=[f"{_name(estimator)} converted to ONNX-ML by skl2onnx; the reference is scikit-learn's {what}."],
    )


def _skl2onnx(estimator, spec: TensorSpec):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_onnx(estimator, initial_types=[(spec.name, FloatTensorType([None, spec.shape[1]]))],
                       target_opset=OPSETS, options={"zipmap": False} if hasattr(estimator, "predict_proba") else None)


def _name(obj: Any) -> str:
    return type(obj).__name__

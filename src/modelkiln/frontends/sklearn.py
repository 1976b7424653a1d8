"""scikit-learn frontend: one pickle/joblib file. Tree ensembles (RandomForest, ExtraTrees, GradientBoosting,
HistGradientBoosting; classifier or regressor) go to Treelite, with an ONNX twin from skl2onnx; every other
estimator or Pipeline goes through skl2onnx to ONNX, the neural nets' path. Reference: the estimator's
own predict_proba (classifiers) or predict.

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

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import ConvertedModel, Feeds, TensorSpec, exactly_one
from modelkiln.frontends.trees import ANY_ROWS, adapt_onnx, input_spec, output_spec, shaped_reference

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
    out = output_spec(tree_model)
    classifier = hasattr(estimator, "predict_proba")
    predict = estimator.predict_proba if classifier else estimator.predict
    what = f"{_name(estimator)}.{'predict_proba' if classifier else 'predict'}"
    reference = shaped_reference(predict, tree_model, spec.name, what)
    notes = [f"{_name(estimator)} compiled from Treelite's import; the reference is {what}."]
    onnx_model = None
    try:
        converted = _skl2onnx(estimator, spec)
        names = [o.name for o in converted.graph.output]
        column = 1 if classifier and out.shape == (ANY_ROWS,) else None
        onnx_model = adapt_onnx(converted, names[-1], out, spec.name, column)
        notes.append("ONNX-ML twin converted by skl2onnx.")
    except Exception as exc:  # a converter gap only removes the ONNX candidates
        notes.append(f"No ONNX twin: skl2onnx could not convert it ({str(exc).splitlines()[0][:200]}).")
    return ConvertedModel(
        onnx_model=onnx_model, inputs=[spec], outputs=[out], reference=reference, framework="SKLEARN",
        framework_version=saved or sklearn.__version__, converters={**versions, "treelite": treelite.__version__},
        notes=notes, tree_model=tree_model,
    )


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
    classifier = hasattr(estimator, "predict_proba") and len(names) == 2

    def reference(feeds: Feeds) -> list[np.ndarray]:
        x = feeds[spec.name]
        if classifier:
            return [np.asarray(estimator.predict(x)).astype(np.int64),
                    np.asarray(estimator.predict_proba(x)).astype(np.float32)]
        out = estimator.predict(x) if hasattr(estimator, "predict") else estimator.transform(x)
        return [np.asarray(out).reshape(x.shape[0], -1).astype(np.float32)]

    sample = reference({spec.name: np.zeros((1, spec.shape[1]), np.float32)})
    outputs = [TensorSpec(n, (ANY_ROWS, *o.shape[1:]), o.dtype.name) for n, o in zip(names, sample)]
    return ConvertedModel(
        onnx_model=model, inputs=[spec], outputs=outputs, reference=reference, framework="SKLEARN",
        framework_version=saved or sklearn.__version__, converters={**versions, "skl2onnx": skl2onnx.__version__},
        notes=[f"{_name(estimator)} converted to ONNX-ML by skl2onnx; the reference is scikit-learn's "
               + ("predict and predict_proba." if classifier else "predict.")],
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

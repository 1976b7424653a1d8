"""XGBoost frontend: one model file -> a Treelite model (+ an ONNX twin via onnxmltools). Reference:
xgboost's own Booster.predict, or Treelite's interpreter for the 1.x binary format XGBoost 3 cannot read.

Files taken: JSON (.json), UBJSON (.ubj), the legacy 1.x binary (.model, .bin, .xgb, .deprecated), and
pickles/joblib (.pkl, .pickle, .joblib, .sav) of a Booster or an XGBClassifier/XGBRegressor.
Pickles are code: they are opened only in the process that compiles, which Kiln's server runs as a
sandboxed subprocess (executor/sandbox.py); never call this loader in the API process.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import treelite
import xgboost as xgb

from modelkiln.errors import CompilationError
from modelkiln.frontends.base import ConvertedModel, exactly_one
from modelkiln.frontends.trees import adapt_onnx, gtil_reference, input_spec, output_spec, shaped_reference

PICKLES = (".pkl", ".pickle", ".joblib", ".sav")
LEGACY = (".model", ".bin", ".xgb", ".deprecated")
SUFFIXES = (".json", ".ubj", *LEGACY, *PICKLES)
SAVE_HINT = "save the model with booster.save_model('model.json') (or .ubj) and put that file in model.tar.gz."


def load(model_dir: Path, data_input_config: str | None, input_dtype: str | None = None,
         frontend_options: Mapping[str, Any] | None = None) -> ConvertedModel:
    """Read the archive's one XGBoost model file into Treelite; DataInputConfig, if given, must match F."""
    path = exactly_one(model_dir, SUFFIXES, "XGBoost")
    suffix = path.suffix.lower()
    booster, version, notes = None, None, []
    if suffix in PICKLES:
        booster = _unpickled_booster(path)
    else:
        booster = _booster_from_file(path)
        version = _saved_version(path)
    if booster is None:  # the 1.x binary: XGBoost 3 cannot read it, Treelite can
        tree_model = _treelite(lambda: treelite.frontend.load_xgboost_model_legacy_binary(str(path)), path)
        notes.append("The legacy XGBoost 1.x binary format cannot be read by XGBoost "
                     f"{xgb.__version__}; Treelite read it, and Treelite's interpreter (GTIL) is the reference.")
    else:
        tree_model = _treelite(lambda: treelite.frontend.from_xgboost(booster), path)
    spec = input_spec(data_input_config, tree_model.num_feature, "XGBoost")
    out = output_spec(tree_model)
    if booster is None:
        reference = gtil_reference(tree_model, spec.name)
    else:
        def predict(x: np.ndarray) -> np.ndarray:
            return booster.predict(xgb.DMatrix(x, missing=np.nan))
        reference = shaped_reference(predict, tree_model, spec.name, f"XGBoost's predict ({_objective(booster)})")
    onnx_model, onnx_note = _onnx_twin(booster, spec, out)
    notes.append(onnx_note)
    return ConvertedModel(
        onnx_model=onnx_model, inputs=[spec], outputs=[out], reference=reference, framework="XGBOOST",
        framework_version=version or (xgb.__version__ if booster is not None else "1.x"),
        converters={"treelite": treelite.__version__, "xgboost": xgb.__version__}, notes=notes,
        tree_model=tree_model,
    )


def _unpickled_booster(path: Path) -> xgb.Booster:
    import joblib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = joblib.load(path)
    except Exception as exc:
        raise CompilationError("convert", f"{path.name} is not a readable pickle/joblib file "
                               f"({exc.__class__.__name__}: {str(exc)[:200]}).", SAVE_HINT) from None
    if isinstance(obj, xgb.XGBModel):
        return obj.get_booster()
    if isinstance(obj, xgb.Booster):
        return obj
    raise CompilationError(
        "convert", f"{path.name} holds a {type(obj).__module__}.{type(obj).__name__}, not an XGBoost Booster, "
        "XGBClassifier or XGBRegressor.", "use Framework SKLEARN for scikit-learn estimators, or " + SAVE_HINT)


def _booster_from_file(path: Path) -> xgb.Booster | None:
    """The Booster in a JSON/UBJSON file; None for a legacy 1.x binary, which XGBoost 3 refuses."""
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
        return booster
    except xgb.core.XGBoostError as exc:
        if path.suffix.lower() in (".json", ".ubj"):
            raise CompilationError("convert", f"XGBoost cannot read {path.name}: {str(exc).splitlines()[0][:300]}",
                                   SAVE_HINT) from None
        return None


def _saved_version(path: Path) -> str | None:
    """The XGBoost version that wrote a JSON model file (UBJSON and binaries: not read)."""
    if path.suffix.lower() != ".json":
        return None
    try:
        return ".".join(str(v) for v in json.loads(path.read_text())["version"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _treelite(read, path: Path) -> treelite.Model:
    try:
        return read()
    except treelite.TreeliteError as exc:
        raise CompilationError("convert", f"Treelite cannot read {path.name}: {str(exc).strip().splitlines()[-1][:300]}",
                               SAVE_HINT) from None


def _objective(booster: xgb.Booster) -> str:
    try:
        return json.loads(booster.save_config())["learner"]["objective"]["name"]
    except (KeyError, ValueError):
        return "unknown objective"


def _onnx_twin(booster: xgb.Booster | None, spec, out) -> tuple[Any, str]:
    """The model as ONNX-ML via onnxmltools, rewired to the same output, or None and why not."""
    if booster is None:
        return None, "No ONNX twin: onnxmltools needs XGBoost to read the model."
    try:
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        objective = _objective(booster)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_xgboost(booster, initial_types=[(spec.name, FloatTensorType([None, spec.shape[1]]))],
                                    target_opset=15)  # onnxmltools 1.16 converts up to 15
        names = [o.name for o in model.graph.output]
        source = names[-1]  # classifiers: [label, probabilities]; regressors: [variable]
        column = 1 if objective.startswith("binary:") else None
        return adapt_onnx(model, source, out, spec.name, column), "ONNX-ML twin converted by onnxmltools."
    except Exception as exc:  # a converter gap only removes the ONNX candidates
        return None, f"No ONNX twin: onnxmltools could not convert the model ({str(exc).splitlines()[0][:200]})."

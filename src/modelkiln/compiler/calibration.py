"""Data for reduced-precision candidates: calibration samples (int8 ranges are measured on them) and held-out
evaluation samples (each candidate's accuracy is measured on them against the source model).

From the archive's `calibration.npz`, or the file CompilerOptions kiln-calibration names (fetched by the
service's worker): one array per input name, first axis = samples. Every fourth sample is held out for
evaluation. Without data, samples are drawn as check_inputs draws them, and reports say the accuracy is on
synthetic data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelkiln.compiler import check_inputs
from modelkiln.compiler.check_inputs import Feeds
from modelkiln.errors import CompilationError
from modelkiln.frontends import ConvertedModel

CALIBRATION_FILE = "calibration.npz"
MAX_SAMPLES = 256  # calibration + evaluation; each evaluation sample runs every reduced-precision candidate
DRAWN_SAMPLES = 32
HOLD_OUT_EVERY = 4  # sample i is for evaluation when i % 4 == 3: interleaved, so sorted data splits fairly


@dataclass
class PrecisionData:
    calibration: list[Feeds]
    evaluation: list[Feeds]
    expected: list[list[np.ndarray]]  # the source model's outputs on each evaluation sample
    data: str  # where the samples came from, for the report
    synthetic: bool


def prepare(model: ConvertedModel, model_dir: Path, supplied: Path | None, supplied_as: str = "") -> PrecisionData:
    """The samples: `supplied` (kiln-calibration's file) first, else the archive's calibration.npz, else drawn."""
    found = supplied or next(iter(sorted(model_dir.rglob(CALIBRATION_FILE))), None)
    if found is not None:
        label = supplied_as or CALIBRATION_FILE
        samples = check_inputs.read_samples(found, model.inputs, label, MAX_SAMPLES)
        if len(samples) < 2:
            raise CompilationError("calibrate", f"{label} holds {len(samples)} sample; reduced precision needs at "
                                   "least 2 (one to calibrate on, one to evaluate on)",
                                   "add samples (real inputs: 100 or more give trustworthy int8 ranges and "
                                   "accuracy figures).")
        data, synthetic = f"{label}: {len(samples)} samples", False
    else:
        ranges = check_inputs.index_ranges(model.onnx_model, model.inputs) if model.onnx_model is not None else {}
        samples = [check_inputs.draw(model.inputs, ranges, seed=check_inputs.SEED + 1 + i)
                   for i in range(DRAWN_SAMPLES)]
        data, synthetic = (f"{DRAWN_SAMPLES} drawn samples: synthetic data, give {CALIBRATION_FILE} for figures "
                           "that mean something"), True
    evaluation = [s for i, s in enumerate(samples) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1] or samples[-1:]
    calibration = [s for s in samples if not any(s is e for e in evaluation)]
    return PrecisionData(calibration, evaluation, [model.reference(s) for s in evaluation], data, synthetic)

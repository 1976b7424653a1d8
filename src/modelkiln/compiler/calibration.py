"""Data for reduced-precision candidates: calibration samples (int8 ranges are measured on them) and held-out
evaluation samples (each candidate's accuracy is measured on them against the source model).

From the archive's `calibration.npz`, or the file CompilerOptions kiln-calibration names (fetched by the
service's worker): one array per input name, first axis = samples. Up to 256 samples, spread over the file,
calibrate and at least one in four is held out; every sample beyond those 256 is held out too, because a top-1
budget needs many decisions to be shown (0.99 takes 268). Without data, samples are drawn as check_inputs draws
them, and reports say the accuracy is on synthetic data.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from modelkiln.compiler import check_inputs
from modelkiln.compiler.check_inputs import Feeds
from modelkiln.errors import CompilationError
from modelkiln.frontends import ConvertedModel

CALIBRATION_FILE = "calibration.npz"
CALIBRATION_MAX = 256  # int8 ranges settle well before this (NNCF's default subset is 300); the rest evaluates
MAX_SAMPLES = CALIBRATION_MAX + 1024  # read at most; each evaluation sample runs every reduced-precision candidate
DRAWN_SAMPLES = 32
HOLD_OUT_EVERY = 4  # at least one sample in four is held out for evaluation

Outputs = list[np.ndarray]


@dataclass
class PrecisionData:
    calibration: list[Feeds]
    evaluation: list[Feeds]
    expected: list[Outputs]  # the source model's outputs on each evaluation sample
    data: str  # where the samples came from, for the report
    synthetic: bool
    reference: Callable[[Feeds], Outputs]  # runs the source model: its outputs on more samples, when needed

    def unseen_by(self, precision: str, data_free: bool = False) -> tuple[list[Feeds], list[Outputs]]:
        """The samples a candidate of this precision was not made from, and the source's outputs on them: the
        held-out ones for int8, every sample for bfloat16/float16 and for a data-free int8 (weights quantized
        alone, activations at run time), which no sample went into."""
        if precision == "int8" and not data_free:
            return self.evaluation, self.expected
        return self.calibration + self.evaluation, self._calibration_expected + self.expected

    @cached_property
    def _calibration_expected(self) -> list[Outputs]:
        return [self.reference(s) for s in self.calibration]


def split(count: int) -> tuple[list[int], list[int]]:
    """Which of count samples calibrate and which evaluate: at most CALIBRATION_MAX and three in four calibrate,
    evenly spread over the file, so that sorted data (say, by class) splits fairly; the rest evaluate."""
    held = max(1, count // HOLD_OUT_EVERY)
    calibrating = min(CALIBRATION_MAX, count - held)
    chosen = set(np.linspace(0, count - 1, calibrating).round().astype(int).tolist()) if calibrating > 0 else set()
    return sorted(chosen), [i for i in range(count) if i not in chosen]


def samples_for_evaluation(wanted: int) -> int:
    """How many samples a file needs for `wanted` evaluation samples under split()."""
    return min(HOLD_OUT_EVERY * wanted, CALIBRATION_MAX + wanted)


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
    calibrating, evaluating = split(len(samples))
    evaluation = [samples[i] for i in evaluating]
    return PrecisionData([samples[i] for i in calibrating], evaluation, [model.reference(s) for s in evaluation],
                         data, synthetic, model.reference)

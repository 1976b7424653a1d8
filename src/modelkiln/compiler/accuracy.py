"""How far a reduced-precision candidate (int8, bfloat16, float16) is from the source model, on held-out
evaluation samples, and whether that is within the accuracy budget (CompilerOptions kiln-accuracy).

Elementwise tolerances do not fit reduced precision (an int8 logit is off by its quantization step), so such
candidates are judged by what the model's user sees: whether a classifier picks the same class (top-1
agreement) and, for other outputs, how closely the output vector points the same way (cosine similarity).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelkiln.targets.options import AccuracyBudget

# The defaults per output kind, stated in every report that uses them.
CLASSIFIER_BUDGET = AccuracyBudget("top1_agreement", 0.99)
OTHER_BUDGET = AccuracyBudget("cosine", 0.999)


@dataclass
class Accuracy:
    """A candidate's outputs against the source's over the evaluation samples (the worst output counts)."""

    samples: int
    data: str  # where the samples came from (the archive's calibration.npz, kiln-calibration, or drawn)
    cosine: float  # the worst sample's cosine similarity, over outputs
    max_rel_err: float  # max |candidate - source| / max |source|, over outputs
    top1_agreement: float | None  # over classifier-like outputs; None when there are none
    budgets: list[str]  # the budget each output was judged by
    met: bool

    def describe(self) -> str:
        top1 = f"top-1 agreement {self.top1_agreement:.4f}, " if self.top1_agreement is not None else ""
        return (f"{top1}cosine {self.cosine:.5f}, max rel err {self.max_rel_err:.2e} on {self.samples} "
                f"evaluation sample(s) ({self.data}); budget {'; '.join(self.budgets)}: "
                + ("met" if self.met else "NOT met"))


def classifier_like(reference: np.ndarray) -> bool:
    """[batch, classes] scores: the output a top-1 decision is read from."""
    return reference.ndim == 2 and reference.shape[1] >= 2 and reference.dtype.kind == "f"


def budget_for(reference: np.ndarray, asked: AccuracyBudget | None) -> AccuracyBudget:
    """The user's budget; else top-1 agreement for classifier-like outputs and cosine for the rest. Top-1 of an
    output that is not classifier-like means nothing, so such an output is judged by cosine instead."""
    if classifier_like(reference):
        return asked or CLASSIFIER_BUDGET
    return asked if asked is not None and asked.metric != "top1_agreement" else OTHER_BUDGET


def measure(outputs: Sequence[Sequence[np.ndarray]], references: Sequence[Sequence[np.ndarray]],
            asked: AccuracyBudget | None, data: str) -> Accuracy:
    """outputs[s][k]: the candidate's output k on evaluation sample s; references likewise, from the source."""
    cosines, rel_errs, agreements, budgets, met = [], [], [], [], True
    for k in range(len(references[0])):
        ref = [np.asarray(r[k], dtype=np.float64) for r in references]
        out = [np.asarray(o[k], dtype=np.float64) for o in outputs]
        cos = min(_cosine(o, r) for o, r in zip(out, ref))
        scale = max(float(np.abs(r).max()) if r.size else 0.0 for r in ref)
        rel = max(float(np.abs(o - r).max()) if r.size else 0.0 for o, r in zip(out, ref)) / max(scale, 1e-6)
        figures = {"cosine": cos, "max_rel_err": rel}
        if classifier_like(np.asarray(references[0][k])):
            agree = float(np.mean([np.mean(o.argmax(-1) == r.argmax(-1)) for o, r in zip(out, ref)]))
            agreements.append(agree)
            figures["top1_agreement"] = agree
        budget = budget_for(np.asarray(references[0][k]), asked)
        budgets.append(f"output {k}: {budget.describe()}")
        met = met and budget.met_by(figures[budget.metric])
        cosines.append(cos)
        rel_errs.append(rel)
    return Accuracy(len(references), data, min(cosines), max(rel_errs), min(agreements) if agreements else None,
                    budgets, met)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if not np.isfinite(a).all() or a.shape != b.shape:
        return -1.0
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:  # an all-zero output agrees only with itself
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)

"""How far a reduced-precision candidate (int8, bfloat16, float16) is from the source model, on held-out
evaluation samples, and whether that is within the accuracy budget (CompilerOptions kiln-accuracy).

Elementwise tolerances do not fit reduced precision (an int8 logit is off by its quantization step), so such
candidates are judged by what the model's user sees: whether a classifier picks the same class (top-1
agreement) and, for other outputs, how closely the output vector points the same way (cosine similarity).

A top-1 budget is a claim about inputs the evaluation did not see, so it is judged by the agreement the samples
support with 95% confidence (the Wilson score lower bound), not by the share that happened to agree: 16 of 16
agreeing supports only 0.855, and showing 0.99 takes 268 agreeing decisions. (Measured: an int8 EfficientNet
that agreed on 16 of 16 held-out photos agreed on 60 of 64 others.) The cosine budget is judged on the worst
sample: a bound over the samples seen, which more samples make more telling (measured: an int8 YOLOv8n whose
worst cosine on 64 held-out photo crops was over 0.999 had 0.9988 on 256 others).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import math

import numpy as np

from modelkiln.compiler.calibration import CALIBRATION_MAX, samples_for_evaluation
from modelkiln.targets.options import AccuracyBudget

# The defaults per output kind, stated in every report that uses them.
CLASSIFIER_BUDGET = AccuracyBudget("top1_agreement", 0.99)
OTHER_BUDGET = AccuracyBudget("cosine", 0.999)
Z = 1.645  # one-sided 95% confidence


def agreement_lower_bound(agreeing: int, total: int) -> float:
    """The Wilson score lower bound (one-sided 95%) of a proportion observed as agreeing / total."""
    if total <= 0:
        return 0.0
    p, z2 = agreeing / total, Z * Z
    centre = p + z2 / (2 * total)
    spread = Z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, (centre - spread) / (1 + z2 / total))


def decisions_needed(bound: float) -> int:
    """How many decisions, all agreeing, show top-1 agreement >= bound at 95% confidence (n / (n + z^2))."""
    return math.ceil(bound * Z * Z / (1 - bound)) if bound < 1 else 10**9


def agreeing_needed(bound: float, total: int) -> int | None:
    """The fewest of total decisions that, agreeing, show top-1 agreement >= bound at 95% confidence; None when
    even all of them cannot."""
    if agreement_lower_bound(total, total) < bound:
        return None
    agreeing = total
    while agreeing > 0 and agreement_lower_bound(agreeing - 1, total) >= bound:
        agreeing -= 1
    return agreeing


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
    # How far the output that clears its budget least clears it (< 0: missed): for top-1, the share of decisions to
    # spare beyond those the 95% bound needs (a search such as NNCF's accuracy control can aim at it); else in the
    # metric's own units.
    margin: float
    top1_decisions: tuple[int, int] | None = None  # (agreeing, total) for the worst classifier-like output
    top1_lower_bound: float | None = None  # what those decisions show with 95% confidence: judged by the budget
    hint: str = ""  # how to make the figure able to meet the budget, when too few samples were the cause

    def describe(self) -> str:
        top1 = ""
        if self.top1_agreement is not None and self.top1_decisions:
            agreeing, total = self.top1_decisions
            top1 = (f"top-1 agreement {self.top1_agreement:.4f} ({agreeing}/{total}; 95% lower bound "
                    f"{self.top1_lower_bound:.4f}), ")
        return (f"{top1}cosine {self.cosine:.5f}, max rel err {self.max_rel_err:.2e} on {self.samples} "
                f"evaluation sample(s) ({self.data}); budget {'; '.join(self.budgets)}: "
                + ("met" if self.met else "NOT met") + (f"; {self.hint}" if self.hint else ""))


def classifier_like(reference: np.ndarray) -> bool:
    """[batch, classes] scores: the output a top-1 decision is read from. Not an embedding of the same shape,
    told by its rows: unit L2 norm with negative entries (a sentence embedding, L2-normalized), where a softmax
    row has no negative entry and logits no fixed norm. Its users compare embeddings by cosine."""
    if reference.ndim != 2 or reference.shape[1] < 2 or reference.dtype.kind != "f":
        return False
    norms = np.linalg.norm(reference.astype(np.float64), axis=1)
    return not (np.abs(norms - 1.0) < 1e-3).all() or not (reference < 0).any()


def budget_for(reference: np.ndarray, asked: AccuracyBudget | None) -> AccuracyBudget:
    """The user's budget; else top-1 agreement for classifier-like outputs and cosine for the rest. Top-1 of an
    output that is not classifier-like means nothing, so such an output is judged by cosine instead."""
    if classifier_like(reference):
        return asked or CLASSIFIER_BUDGET
    return asked if asked is not None and asked.metric != "top1_agreement" else OTHER_BUDGET


def measure(outputs: Sequence[Sequence[np.ndarray]], references: Sequence[Sequence[np.ndarray]],
            asked: AccuracyBudget | None, data: str) -> Accuracy:
    """outputs[s][k]: the candidate's output k on evaluation sample s; references likewise, from the source."""
    cosines, rel_errs, budgets, margins = [], [], [], []
    top1: list[tuple[float, int, int]] = []  # (lower bound, agreeing, total) per classifier-like output
    hint = ""
    for k in range(len(references[0])):
        ref = [np.asarray(r[k], dtype=np.float64) for r in references]
        out = [np.asarray(o[k], dtype=np.float64) for o in outputs]
        cos = min(_cosine(o, r) for o, r in zip(out, ref))
        scale = max(float(np.abs(r).max()) if r.size else 0.0 for r in ref)
        rel = max(float(np.abs(o - r).max()) if r.size else 0.0 for o, r in zip(out, ref)) / max(scale, 1e-6)
        if classifier_like(np.asarray(references[0][k])):
            agreeing = int(sum(int((o.argmax(-1) == r.argmax(-1)).sum()) for o, r in zip(out, ref)))
            total = sum(int(r.shape[0]) for r in ref)
            top1.append((agreement_lower_bound(agreeing, total), agreeing, total))
        budget = budget_for(np.asarray(references[0][k]), asked)
        budgets.append(f"output {k}: {budget.describe()}" + (" (at 95% confidence)" if budget.metric == "top1_agreement" else ""))
        if budget.metric == "top1_agreement":  # budget_for gives top-1 to classifier-like outputs only
            needed = agreeing_needed(budget.bound, total)
            margins.append((agreeing - (total + 1 if needed is None else needed)) / max(total, 1))
            if needed is None:
                need = decisions_needed(budget.bound)
                hint = (f"{total} decisions cannot show top-1 agreement >= {budget.bound:g} at 95% confidence even "
                        f"if all agree: give at least {need} evaluation samples (a calibration.npz of "
                        f"{samples_for_evaluation(need)} samples: Kiln calibrates on at most {CALIBRATION_MAX} and "
                        "evaluates on the rest), or relax kiln-accuracy")
        else:
            margins.append(budget.bound - rel if budget.metric == "max_rel_err" else cos - budget.bound)
        cosines.append(cos)
        rel_errs.append(rel)
    worst = min(top1) if top1 else None
    return Accuracy(len(references), data, min(cosines), max(rel_errs),
                    worst[1] / worst[2] if worst else None, budgets, min(margins) >= 0, min(margins),
                    (worst[1], worst[2]) if worst else None, worst[0] if worst else None, hint)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if not np.isfinite(a).all() or a.shape != b.shape:
        return -1.0
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:  # an all-zero output agrees only with itself
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)

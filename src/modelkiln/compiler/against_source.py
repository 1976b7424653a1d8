"""Whether an artifact's outputs, computed somewhere else (an inference job on a device), match the source
model's on the same inputs, by the rule the artifact was verified by when it was compiled.

A float artifact is held to the tolerance its compile checked it with (its report's selected candidate),
quantization-aware for quantized outputs. A reduced-precision one (int8, bfloat16, float16) is held to the
compile's accuracy budget, read on this one input as observed (no confidence bound: the compile's report
carries the held-out figure): the top class of every row agrees, or the cosine / max rel err is within bound.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelkiln.compiler.accuracy import budget_for, measure
from modelkiln.compiler.archive import extract_model
from modelkiln.compiler.verify import TOLERANCE, compare
from modelkiln.errors import ValidationError
from modelkiln.frontends import frontend_for
from modelkiln.frontends.base import Quantization
from modelkiln.targets import parse_compiler_options


REDUCED = ("int8", "bfloat16", "float16")  # judged by the compile's accuracy budget, not an elementwise tolerance


@dataclass(frozen=True)
class Agreement:
    matched: bool
    rule: str
    detail: str
    max_abs_err: float | None
    max_rel_err: float | None
    cosine: float | None  # the worst output's
    top1_agreement: float | None  # over the rows of classifier-like outputs


@dataclass(frozen=True)
class Verified:
    """What an artifact's report.json says of how it was checked at compile time."""

    precision: str
    tolerance: float
    outputs: list[str]
    quantization: list[Quantization | None]


def verified_by(report: dict) -> Verified:
    """The selected candidate's precision and tolerance, and the outputs' names and quantization.
    ValueError if the report does not say (not a Kiln artifact's)."""
    selected = next((c for c in report.get("candidates") or [] if isinstance(c, dict)
                     and c.get("name") == report.get("selected")), None)
    outputs = report.get("outputs")
    if selected is None or not isinstance(outputs, list) or not outputs:
        raise ValueError("its report.json names no selected candidate or no outputs")
    precision = str(selected.get("precision") or "float32")
    check = selected.get("check") if isinstance(selected.get("check"), dict) else {}
    tolerance = float(check.get("tolerance") or TOLERANCE.get(precision, TOLERANCE["float32"]))
    quantization = [Quantization(**o["quantization"]) if isinstance(o.get("quantization"), dict) else None
                    for o in outputs]
    return Verified(precision, tolerance, [str(o.get("name")) for o in outputs], quantization)


def against_source(verified: Verified, compiler_options: str | None, outputs: list[np.ndarray],
                   reference: list[np.ndarray], ran_on: str) -> Agreement:
    """outputs[k] (the artifact's) against reference[k] (the source model's), output by output."""
    shapes = [(list(o.shape), list(r.shape)) for o, r in zip(outputs, reference) if o.shape != r.shape]
    if len(outputs) != len(reference) or shapes:
        what = (f"{len(outputs)} outputs where the source gives {len(reference)}" if len(outputs) != len(reference)
                else f"output shapes {[s[0] for s in shapes]} where the source gives {[s[1] for s in shapes]}")
        return Agreement(False, "outputs of the source's number and shapes", what, None, None, None, None)
    figures = measure([outputs], [reference], None, "the inference job's inputs")
    exact = compare(outputs, reference, verified.tolerance, ran_on, verified.quantization)
    top1 = figures.top1_agreement
    if verified.precision not in REDUCED:
        rule = (f"max rel err <= {verified.tolerance:.0e}"
                + (" (quantized outputs: within their quantization steps)" if any(verified.quantization) else "")
                + f", as the {verified.precision} artifact was verified at compile time")
        detail = exact.detail or (f"max rel err {exact.max_rel_err:.2e}" if exact.max_rel_err is not None else "")
        return Agreement(exact.status == "verified", rule, detail, exact.max_abs_err, exact.max_rel_err,
                         figures.cosine, top1)
    asked = parse_compiler_options(compiler_options).accuracy
    verdicts, budgets, matched = [], [], True
    for k, (out, ref) in enumerate(zip(outputs, reference)):
        budget = budget_for(ref, asked)  # top-1 only for classifier-like outputs
        value = _observed(budget.metric, out, ref)
        met = budget.met_by(value)
        matched = matched and met
        budgets.append(f"output {k}: {budget.describe()}")
        verdicts.append(f"output {k} {budget.metric} {value:.5g}" + ("" if met else " (NOT met)"))
    rule = (f"the compile's accuracy budget for its {verified.precision} artifact, on this input as observed: "
            + "; ".join(budgets))
    return Agreement(matched, rule, "; ".join(verdicts), exact.max_abs_err, exact.max_rel_err, figures.cosine, top1)


def _observed(metric: str, out: np.ndarray, ref: np.ndarray) -> float:
    if metric == "top1_agreement":
        return float((out.argmax(-1) == ref.argmax(-1)).mean())
    figures = measure([[out]], [[ref]], None, "")
    return figures.max_rel_err if metric == "max_rel_err" else figures.cosine


def source_outputs(archive: Path, framework: str, data_input_config: str | None, compiler_options: str | None,
                   given: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """The source model, read as its compile read it, run by its framework on `given`: its outputs by name,
    and what ran (framework and version)."""
    options = parse_compiler_options(compiler_options)
    with tempfile.TemporaryDirectory(prefix="kiln-") as tmp:
        model_dir = extract_model(archive, Path(tmp) / "model")
        model = frontend_for(framework)(model_dir, data_input_config, options.input_dtype, options.recorded)
        outputs = model.reference(feeds(given, [i.name for i in model.inputs]))
    # a TorchScript file records no version: then name the server's packages that read and ran it
    ran = (f"{model.framework} {model.framework_version}" if model.framework_version else
           f"{model.framework} (the server's {', '.join(f'{k} {v}' for k, v in model.converters.items())})")
    return {o.name: np.asarray(a) for o, a in zip(model.outputs, outputs)}, ran


def feeds(given: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The job's arrays by the model's input names; one input may go by any name, as the device's agent allows."""
    if len(names) == 1 and len(given) == 1:
        return {names[0]: next(iter(given.values()))}
    missing = [n for n in names if n not in given]
    if missing:
        raise ValidationError("InputS3Uri", f"has no array named {', '.join(missing)} (it has "
                                            f"{', '.join(given) or 'none'}); the model's inputs are {', '.join(names)}")
    return {n: given[n] for n in names}

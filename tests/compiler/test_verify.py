"""The checks themselves: how embedded code is found, and how inputs for a check are drawn."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper
from onnx.helper import make_node, make_tensor_value_info

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.compiler.check_inputs import INPUTS_FILE, draw, index_ranges, prepare
from modelkiln.compiler.verify import compare, embedded_elf_arches, median_latencies_ms
from modelkiln.errors import CompilationError
from modelkiln.frontends import TensorSpec, frontend_for

from ..conftest import onnx_model

AARCH64_LIBC = Path("/usr/aarch64-linux-gnu/lib/libc.so.6")  # Debian's libc6-arm64-cross


def test_embedded_elf_images_are_found_by_their_headers_not_by_the_magic_alone():
    host = Path(sys.executable).resolve().read_bytes()
    arm = AARCH64_LIBC.read_bytes()
    # weights that happen to spell the magic, then a header cut short, then two real images
    junk = b"\x00" * 100 + b"\x7fELF" + bytes(range(60)) + b"\x7fELF\x02\x01\x01" + b"\x00" * 9
    blob = junk + host + b"\x00" * 13 + arm
    assert embedded_elf_arches(blob) == {("x86_64", 2), ("aarch64", 2)}
    assert embedded_elf_arches(junk) == set()
    assert embedded_elf_arches(arm[:64]) == set()  # a header whose section table is missing is no image


# ---- the inputs a check runs on ----------------------------------------------------------------------------

def _embedding_model(path: Path, vocab: int = 1000) -> Path:
    """ids [1, 64] index a [vocab, 4] table (through a Cast, as exporters write it); mask [1, 64] scales it."""
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((vocab, 4)).astype(np.float32), "table")
    nodes = [make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
             make_node("Gather", ["table", "ids64"], ["emb"]),
             make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
             make_node("Mul", ["emb", "mask3"], ["out"])]
    axis = numpy_helper.from_array(np.array([2], np.int64), "axis")
    return onnx_model(path, nodes, [make_tensor_value_info("ids", TensorProto.INT32, [1, 64]),
                                    make_tensor_value_info("mask", TensorProto.INT64, [1, 64])],
                      [make_tensor_value_info("out", TensorProto.FLOAT, [1, 64, 4])], [table, axis])


def test_drawn_ids_cover_the_vocabulary_their_gather_allows_and_masks_stay_binary(tmp_path):
    model = frontend_for("ONNX")(_embedding_model(tmp_path / "m.onnx").parent, None, None, {})
    assert index_ranges(model.onnx_model, model.inputs) == {"ids": 1000}
    inputs = prepare(model, tmp_path)
    ids, mask = inputs.samples[0]["ids"], inputs.samples[0]["mask"]
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 1000 and ids.max() > 100
    assert set(np.unique(mask)) <= {0, 1}
    assert "ids: integers in [0, 1000) (the Gather it indexes)" in inputs.described and "mask: {0, 1}" in inputs.described


def test_uint8_images_span_their_range_and_tree_inputs_have_missing_values():
    feeds = draw([TensorSpec("img", (1, 32, 32, 3), "uint8"), TensorSpec("x", (-1, 5), "float32")], missing=True)
    assert feeds["img"].min() < 10 and feeds["img"].max() > 245
    assert feeds["x"].shape == (256, 5) and 0.05 < np.isnan(feeds["x"]).mean() < 0.15


def test_samples_from_the_archive_are_checked_too(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    _embedding_model(d / "m.onnx", vocab=50)
    ids = np.arange(3 * 64, dtype=np.int32).reshape(3, 1, 64) % 50
    np.savez(d / INPUTS_FILE, ids=ids, mask=np.ones((3, 1, 64), np.int64))
    report = compile_job(CompileJob(model=d, framework="ONNX", output_dir=tmp_path / "out", target_device="ml_c5",
                                    compiler_options='{"kiln-backend": "onnxruntime"}'))
    assert report.verified and f"and 3 sample(s) from the archive's {INPUTS_FILE}" in report.check_inputs


@pytest.mark.parametrize("arrays, words", [
    ({"ids": np.zeros((1, 64), np.int32)}, ["holds arrays ['ids']", "inputs are ['ids', 'mask']"]),
    ({"ids": np.zeros((1, 63), np.int32), "mask": np.zeros((1, 64), np.int64)}, ["['ids'] has shape [1, 63]"]),
    ({"ids": np.zeros((1, 64), np.float32), "mask": np.zeros((1, 64), np.int64)}, ["is float32", "takes int32"]),
    ({"ids": np.zeros((2, 1, 64), np.int32), "mask": np.zeros((3, 1, 64), np.int64)}, ["different numbers"]),
    ({"ids": np.array([{"a": 1}] * 64, dtype=object).reshape(1, 64), "mask": np.zeros((1, 64), np.int64)},
     ["plain arrays"]),  # an object array is a pickle: code, never loaded
])
def test_a_bad_samples_file_fails_naming_what_to_fix(tmp_path, arrays, words):
    _embedding_model(tmp_path / "m.onnx")
    np.savez(tmp_path / INPUTS_FILE, **arrays)
    model = frontend_for("ONNX")(tmp_path, None, None, {})
    with pytest.raises(CompilationError) as err:
        prepare(model, tmp_path)
    for word in words:
        assert word in err.value.message
    assert INPUTS_FILE in err.value.hint


class _Sleeper:
    """A runtime that takes a known time a run: timing is what is under test here."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.runs = seconds, 0

    def run(self, inputs):
        self.runs += 1
        time.sleep(self.seconds)
        return inputs


def test_a_hopeless_candidate_is_timed_once_and_not_further():
    fast, slow = _Sleeper(0.002), _Sleeper(0.05)
    timing = median_latencies_ms({"fast": fast, "slow": slow}, [], budget_s=0.3)
    assert timing.timed_once == {"slow"} and slow.runs == 2  # warm-up + the one timed run
    assert fast.runs > 10 and timing.latencies_ms["slow"] > 10 * timing.latencies_ms["fast"]


def test_non_finite_values_must_agree_and_do_not_hide_other_errors():
    ref = np.array([[1.0, np.inf, np.nan, -np.inf]], np.float32)
    assert compare([ref.copy()], [ref], 1e-3, "host").status == "verified"
    for wrong, why in [(np.array([[1.0, 3e38, np.nan, -np.inf]], np.float32), "is 3"),
                       (np.array([[1.0, np.inf, 0.0, -np.inf]], np.float32), "is 0.0 at [0, 2]"),
                       (np.array([[1.0, -np.inf, np.nan, -np.inf]], np.float32), "is -inf at [0, 1]")]:
        check = compare([wrong], [ref], 1e-3, "host")
        assert check.status == "mismatch" and why in check.detail and "non-finite values differ" in check.detail
    # an inf elsewhere in the reference no longer scales a real error away
    check = compare([np.array([[2.0, np.inf]], np.float32)], [np.array([[1.0, np.inf]], np.float32)], 1e-3, "host")
    assert check.status == "mismatch" and check.max_rel_err == 1.0

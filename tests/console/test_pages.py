"""What the console's pages are built from, without a server: report.json read as untrusted data, the form's
request and error places, and the jobs list's filters and paging over a real job store."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from modelkiln.api import Services
from modelkiln.api.console import forms, listing, pages
from modelkiln.api.console.artifacts import NoArtifact, report_in
from modelkiln.auth import AccountStore
from modelkiln.errors import ValidationError
from modelkiln.jobs import validation
from modelkiln.jobs.model import Job
from modelkiln.jobs.store import JobStore
from modelkiln.storage import open_store

REPORT = {
    "selected": "openvino",
    "selection": "fastest verified",
    "verified": True,
    "stages_s": {"fetch": 0.5, "convert": 1.5, "compile": 6.0, "select": 2.0},
    "notes": ["a note"],
    "precision": {"asked": "int8", "data": "calibration.npz"},
    "candidates": [
        {"name": "openvino", "backend": "openvino", "precision": "float32", "status": "selected", "latency_ms": 2.0,
         "compile_s": 3.0, "size_bytes": 4096, "notes": ["picked"],
         "check": {"status": "VERIFIED", "ran_on": "host (x86_64)", "max_rel_err": 1e-6}},
        {"name": "onnxruntime-int8", "backend": "onnxruntime", "precision": "int8", "status": "passed",
         "latency_ms": 1.0, "check": {"status": "VERIFIED", "ran_on": "host (x86_64)", "accuracy": {
             "samples": 32, "cosine": 0.9991, "max_rel_err": 0.02, "top1_agreement": 0.97, "met": True}}},
        {"name": "tvm", "backend": "tvm", "status": "failed", "reason": "no schedule", "latency_ms": None},
    ],
}


def test_a_report_becomes_timeline_candidates_chart_and_notes():
    view = pages.report_view(REPORT)
    assert [s.name for s in view.stages] == ["fetch", "convert", "compile", "select"]
    assert sum(s.width for s in view.stages) == pytest.approx(100)
    assert view.stages[2].x == pytest.approx(20) and view.stages[2].width == pytest.approx(60)
    assert [(r.name, r.seconds) for r in view.stage_rows] == [
        ("fetch", "500 ms"), ("convert", "1.5 s"), ("calibrate", ""), ("compile", "6.0 s"), ("select", "2.0 s"),
        ("package", "")]
    assert view.total == "10.0 s"
    first, int8, failed = view.candidates
    assert first.selected and not int8.selected
    assert first.ran == "VERIFIED on host (x86_64)" and first.size == "4 KiB" and first.latency == "2.000 ms"
    assert "top-1 agreement 0.9700" in int8.accuracy and "budget met" in int8.accuracy and "32 sample" in int8.accuracy
    assert failed.reason == "no schedule" and failed.latency == ""
    assert view.chart is not None
    assert [(b.label, b.selected) for b in view.chart.bars] == [("openvino", True), ("onnxruntime-int8", False)]
    assert view.chart.bars[0].width == pytest.approx(2 * view.chart.bars[1].width)  # twice as slow, twice as long
    assert view.notes == ["a note", "openvino: picked"]
    assert view.precision == "asked int8; accuracy measured on calibration.npz"


@pytest.mark.parametrize("hostile", [
    {},
    {"candidates": "not a list", "stages_s": [1, 2], "notes": {"a": 1}, "precision": 7},
    {"candidates": [None, 3, {"latency_ms": "fast", "check": "x", "size_bytes": True}],
     "stages_s": {"fetch": float("nan"), "convert": -1, "compile": "1"}},
    {"candidates": [{"name": "<script>", "latency_ms": float("inf")}], "selected": ["x"]},
    {"candidates": [{"name": "x" * 100_000, "latency_ms": 0, "check": {"accuracy": {"cosine": "1"}}}]},
])
def test_a_malformed_report_from_a_job_gives_empty_cells_not_an_error(hostile):
    view = pages.report_view(hostile)
    for row in view.candidates:
        assert len(row.name) <= 81 and row.accuracy == ""
    assert all(0 <= s.width <= 100 for s in view.stages)


def test_the_failure_reason_splits_into_problem_and_fix():
    failure = pages.failure_of("ClientError: fetch: model.tar.gz is not a readable tar archive. Fix: tar -czf it")
    assert failure == pages.Failure("ClientError: fetch: model.tar.gz is not a readable tar archive.", "tar -czf it")
    assert pages.failure_of("ServerError: boom") == pages.Failure("ServerError: boom", "")
    assert pages.failure_of("") is None


def _archive(members: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def test_report_json_is_read_from_the_artifact_stream():
    artifact = _archive({"model.so": b"\0" * 1000, "compiled.meta": b"{}", "report.json": json.dumps(REPORT).encode()})
    assert report_in(artifact)["selected"] == "openvino"
    with pytest.raises(NoArtifact, match="no report.json"):
        report_in(_archive({"model.so": b"x"}))
    with pytest.raises(NoArtifact, match="not a JSON object"):
        report_in(_archive({"report.json": b"[1, 2]"}))


# ---- the new-job form ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, place", [
    ("CompilationJobName", "name"),
    ("InputConfig.FrameworkVersion", "framework_version"),
    ("InputConfig.Framework", "framework"),
    ("InputConfig.DataInputConfig", "data_input_config"),
    ("OutputConfig.TargetPlatform.Arch", "target_platform"),
    ("OutputConfig.CompilerOptions.kiln-backend", "compiler_options"),
    ("OutputConfig", "target_device"),
    ("StoppingCondition.MaxRuntimeInSeconds", "max_runtime"),
    ("RoleArn", ""),
])
def test_an_api_error_is_shown_beside_the_input_it_is_about(field, place):
    assert forms.error_place(field) == place


def test_the_form_makes_the_request_the_api_validates():
    draft = forms.JobDraft(name="j1", bucket="b-1x", framework="PYTORCH", data_input_config='{"x": [1, 3]}',
                           target_device="", target_os="LINUX", target_arch="ARM64",
                           compiler_options='{"kiln-backend": "onnxruntime"}', max_runtime="120")
    request = draft.request("123456789012", "s3://b-1x/m/model.tar.gz")
    parsed = validation.validate_create_compilation_job(request, "123456789012")
    assert parsed.output.target_platform == {"Os": "LINUX", "Arch": "ARM64"}
    assert parsed.output.s3_output_location == "s3://b-1x/j1/"
    assert parsed.stopping.max_runtime_in_seconds == 120
    not_a_number = forms.JobDraft(name="j1", bucket="b-1x", max_runtime="ten").request("123456789012", "s3://b-1x/m")
    with pytest.raises(ValidationError) as refused:
        validation.validate_create_compilation_job(not_a_number, "123456789012")
    assert refused.value.field == "StoppingCondition.MaxRuntimeInSeconds"
    assert draft.upload_key() != draft.upload_key()  # a fresh prefix per upload: no model is ever replaced


# ---- the jobs list -------------------------------------------------------------------------------

@pytest.fixture
def services(tmp_path):
    accounts = AccountStore(tmp_path / "keys.json")
    jobs = JobStore(f"sqlite:///{tmp_path / 'kiln.db'}")
    yield Services(accounts, jobs, open_store(str(tmp_path / "objects")))
    jobs.close()


def _add(services: Services, account: str, name: str, target: str, now: float) -> None:
    params = {"CompilationJobName": name, "RoleArn": f"arn:aws:iam::{account}:role/r",
              "InputConfig": {"S3Uri": "s3://bkt/m.tar.gz", "Framework": "ONNX", "DataInputConfig": '{"x": [1]}'},
              "OutputConfig": {"S3OutputLocation": "s3://bkt/out", "TargetDevice": target},
              "StoppingCondition": {"MaxRuntimeInSeconds": 60}}
    request = validation.validate_create_compilation_job(params, account)
    services.jobs.create(Job.from_request(request, account, now=now))


def test_the_list_filters_by_target_and_pages_without_repeating_or_skipping(services):
    account, other = "111111111111", "222222222222"
    for i in range(30):
        _add(services, account, f"job-{i:02d}", "rasp4b" if i % 3 == 0 else "ml_c5", 1_700_000_000 + i)
    _add(services, other, "job-rasp-other", "rasp4b", 1_700_000_100)
    seen, filters = [], listing.Filters(target="RASP")
    while True:
        page = listing.list_jobs(services, account, filters, page_size=4)
        assert not page.problem
        seen.extend(row.name for row in page.rows)
        if page.next_token is None:
            break
        filters = listing.Filters(target="RASP", token=page.next_token)
    assert seen == [f"job-{i:02d}" for i in range(27, -1, -3)]  # newest first, only rasp4b, only this account

    named = listing.list_jobs(services, account, listing.Filters(name="job-1"), page_size=50)
    assert [row.name for row in named.rows] == [f"job-{i}" for i in range(19, 9, -1)]


def test_a_filter_the_api_would_refuse_is_shown_with_the_apis_message(services):
    refused = listing.list_jobs(services, "111111111111", listing.Filters(name="no_underscores"))
    assert refused.rows == [] and "NameContains" in refused.problem
    bad_token = listing.list_jobs(services, "111111111111", listing.Filters(token="forged"))
    assert "NextToken" in bad_token.problem
    bad_status = listing.list_jobs(services, "111111111111", listing.Filters(status="DONE"))
    assert "StatusEquals" in bad_status.problem

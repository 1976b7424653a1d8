"""The SageMaker compilation-job API end to end: real boto3 against a real `kiln serve` (SQLite, LocalCluster)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
import time
import urllib.request

import botocore.exceptions
import numpy as np
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from modelkiln.runtime import Model
from tests.api.kiln_server import KILN, job_request, wait_for_job

BUCKET = "kiln-tests"


@pytest.fixture(scope="module")
def alice(server):
    return server.create_account()


@pytest.fixture(scope="module")
def bob(server):
    return server.create_account()


@pytest.fixture(scope="module")
def sm(server, alice):
    return server.client("sagemaker", alice, region="eu-west-1")


@pytest.fixture(scope="module")
def uploaded(server, alice, models):
    """Alice's bucket holding the small CNN as ONNX and TorchScript, and a broken archive."""
    s3 = server.client("s3", alice)
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(models / "cnn_onnx.tar.gz"), BUCKET, "cnn/onnx/model.tar.gz")
    s3.upload_file(str(models / "cnn_pth.tar.gz"), BUCKET, "cnn/pth/model.tar.gz")
    s3.put_object(Bucket=BUCKET, Key="broken/model.tar.gz", Body=b"\x1f\x8b\x08 this is not gzip")
    return {"onnx": f"s3://{BUCKET}/cnn/onnx/model.tar.gz", "pth": f"s3://{BUCKET}/cnn/pth/model.tar.gz",
            "broken": f"s3://{BUCKET}/broken/model.tar.gz", "s3": s3}


def _error(call, *args, **kwargs) -> botocore.exceptions.ClientError:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call(*args, **kwargs)
    return caught.value


# ---- a job from upload to running the artifact ------------------------------------------------------------

def test_job_compiles_and_its_artifact_runs(server, alice, sm, uploaded, tmp_path):
    request = job_request(alice, "cnn-onnx", uploaded["onnx"], options=None,
                          Tags=[{"Key": "team", "Value": "vision"}], VpcConfig={"SecurityGroupIds": ["sg-1"],
                                                                                 "Subnets": ["subnet-1"]})
    arn = sm.create_compilation_job(**request)["CompilationJobArn"]
    assert arn == f"arn:aws:sagemaker:eu-west-1:{alice.account_id}:compilation-job/cnn-onnx"
    job = wait_for_job(sm, "cnn-onnx")
    assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
    assert job["FailureReason"] == ""
    assert job["CompilationStartTime"] <= job["CompilationEndTime"]
    assert job["CreationTime"] <= job["CompilationStartTime"]
    assert job["InputConfig"] == request["InputConfig"] and job["OutputConfig"] == request["OutputConfig"]
    assert job["VpcConfig"] == request["VpcConfig"] and job["RoleArn"] == alice.role_arn
    assert json.loads(job["DerivedInformation"]["DerivedDataInputConfig"]) == {"data": [1, 3, 32, 32]}
    uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert uri == f"s3://{BUCKET}/out/model-ml_c5.tar.gz"  # Neo's naming: input name + target
    artifact = tmp_path / "model-ml_c5.tar.gz"
    uploaded["s3"].download_file(BUCKET, "out/model-ml_c5.tar.gz", str(artifact))
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == job["ModelDigests"]["ArtifactDigest"]
    with tarfile.open(artifact) as tar:
        report = json.load(tar.extractfile("report.json"))
    assert len(report["candidates"]) >= 2  # ml_c5 is this host's kind: every backend was tried and timed
    outputs = Model(artifact).run(np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32))
    assert outputs[0].shape == (1, 10) and np.isclose(outputs[0].sum(), 1.0, atol=1e-4)  # softmax


def test_int8_job_calibrates_on_the_callers_kiln_calibration_object(server, alice, sm, uploaded, tmp_path):
    options = {"kiln-precision": "int8", "kiln-backend": "onnxruntime", "kiln-accuracy": {"cosine": 0.5},
               "kiln-calibration": f"s3://{BUCKET}/data/cal.npz"}
    request = job_request(alice, "cnn-int8", uploaded["onnx"], options=json.dumps(options), output=f"s3://{BUCKET}/int8/")
    with pytest.raises(sm.exceptions.ClientError) as caught:  # not uploaded yet: refused before it is queued
        sm.create_compilation_job(**request)
    assert "CompilerOptions.kiln-calibration" in caught.value.response["Error"]["Message"]
    npz = io.BytesIO()
    np.savez(npz, data=np.random.default_rng(3).standard_normal((12, 3, 32, 32)).astype(np.float32))
    uploaded["s3"].put_object(Bucket=BUCKET, Key="data/cal.npz", Body=npz.getvalue())
    sm.create_compilation_job(**request)
    job = wait_for_job(sm, "cnn-int8")
    assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
    body = uploaded["s3"].get_object(Bucket=BUCKET, Key="int8/model-ml_c5.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        report = json.load(tar.extractfile("report.json"))
    assert report["selected"] == "onnxruntime-int8"
    assert report["precision"]["data"] == f"s3://{BUCKET}/data/cal.npz: 12 samples"
    assert (report["precision"]["calibration_samples"], report["precision"]["evaluation_samples"]) == (9, 3)


def test_job_log_is_kept_and_readable(server, alice, bob, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "logged", uploaded["onnx"]))
    assert wait_for_job(sm, "logged")["CompilationJobStatus"] == "COMPLETED"
    credentials = Credentials(alice.access_key_id, alice.secret_access_key)
    request = AWSRequest("GET", f"{server.endpoint}/_kiln/jobs/logged/logs")
    SigV4Auth(credentials, "sagemaker", "us-east-1").add_auth(request)
    with urllib.request.urlopen(urllib.request.Request(request.url, headers=dict(request.headers))) as response:
        text = response.read().decode()
    assert "claimed by worker" in text and "compile: onnxruntime" in text and text.rstrip().endswith("job COMPLETED")
    cli = subprocess.run([KILN, "logs", "logged", "--data-dir", str(server.data_dir), "--account", alice.account_id],
                         capture_output=True, text=True, check=True).stdout
    assert cli == text  # the same log, read from the job store directly
    ambiguous = subprocess.run([KILN, "logs", "logged", "--data-dir", str(server.data_dir)],
                               capture_output=True, text=True)
    assert ambiguous.returncode == 2 and "--account" in ambiguous.stderr  # the data dir has two accounts


def test_pytorch_job_compiles(alice, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "cnn-pth", uploaded["pth"], framework="PYTORCH",
                                            data_input_config='[[1, 3, 32, 32]]'))
    job = wait_for_job(sm, "cnn-pth")
    assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
    assert json.loads(job["DerivedInformation"]["DerivedDataInputConfig"]) == {"input0": [1, 3, 32, 32]}


def _artifact_meta(uploaded, key: str) -> dict:
    body = uploaded["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return json.load(tar.extractfile("compiled.meta"))


def test_gpu_job_for_a_jetson_ships_ptx_for_its_gpu(alice, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "cnn-nano", uploaded["onnx"], target="jetson_nano",
                                            options='{"cuda-ver": "10.2", "trt-ver": "8.0"}'))
    job = wait_for_job(sm, "cnn-nano")
    assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
    meta = _artifact_meta(uploaded, "out/model-jetson_nano.tar.gz")
    assert meta["Requirements"]["TargetDeviceType"] == "gpu" and meta["Backend"]["Name"] == "tvm"
    assert meta["Requirements"]["Gpu"] == {"Api": "cuda", "Code": "sm_53", "PtxIsa": "6.5"}


def test_vulkan_job_whose_code_lavapipe_computes_wrong_fails_naming_the_fix(alice, sm, uploaded):
    request = job_request(alice, "cnn-mali", uploaded["onnx"], options=None)
    del request["OutputConfig"]["TargetDevice"]
    request["OutputConfig"]["TargetPlatform"] = {"Os": "ANDROID", "Arch": "ARM64", "Accelerator": "MALI"}
    sm.create_compilation_job(**request)
    job = wait_for_job(sm, "cnn-mali")
    assert job["CompilationJobStatus"] == "FAILED"
    assert "llvmpipe" in job["FailureReason"] and "gpu-code 'valhall'" in job["FailureReason"]


def test_coreml_job_ships_an_ml_program(alice, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "cnn-coreml", uploaded["pth"], framework="PYTORCH",
                                            target="coreml", options='{"class_labels": ["a", "b", "c", "d", "e", '
                                                                     '"f", "g", "h", "i", "j"]}',
                                            data_input_config='[{"shape": [1, 3, 32, 32]}]'))
    job = wait_for_job(sm, "cnn-coreml")
    assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
    meta = _artifact_meta(uploaded, "out/model-coreml.tar.gz")
    assert meta["Requirements"]["TargetDeviceType"] == "coreml" and meta["Backend"]["Files"] == ["model.mlpackage"]


# ---- jobs that fail say why --------------------------------------------------------------------------------

@pytest.mark.parametrize("case, change, reason", [
    ("broken", {"model": "broken"}, "fetch"),
    ("shape", {"data_input_config": '{"data": [1, 3, 64, 64, 2]}'}, "DataInputConfig"),
    ("name", {"data_input_config": '{"image": [1, 3, 32, 32]}'}, "data"),
    ("inferentia", {"target": "ml_inf1", "options": None}, "ml_inf1"),
])
def test_bad_model_input_fails_the_job_with_a_reason(alice, sm, uploaded, case, change, reason):
    model = uploaded[change.pop("model", "onnx")]
    name = f"fails-{case}"
    try:
        sm.create_compilation_job(**job_request(alice, name, model, **change))
    except botocore.exceptions.ClientError as exc:  # refused up front is as good, if it names the field
        assert exc.response["Error"]["Code"] == "ValidationException" and reason in str(exc)
        return
    job = wait_for_job(sm, name)
    assert job["CompilationJobStatus"] == "FAILED"
    assert job["FailureReason"].startswith("ClientError: ") and reason in job["FailureReason"]
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == ""


# ---- validation: every rejection names the field, and nothing is created ------------------------------------

def _bad(alice, uploaded, **change):
    request = job_request(alice, "never-created", uploaded["onnx"])
    for path, value in change.items():
        node = request
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return request


@pytest.mark.parametrize("change, field", [
    ({"CompilationJobName": "under_score"}, "CompilationJobName"),
    ({"CompilationJobName": "x" * 64}, "CompilationJobName"),
    ({"InputConfig.Framework": "CAFFE"}, "Framework"),
    ({"InputConfig.S3Uri": "ftp://bucket/model.tar.gz"}, "S3Uri"),
    ({"InputConfig.DataInputConfig": "{data: [1,"}, "DataInputConfig"),
    ({"OutputConfig.TargetDevice": "ml_z9"}, "TargetDevice"),
    ({"OutputConfig.TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"}}, "TargetPlatform"),
    ({"OutputConfig.TargetDevice": None}, "TargetDevice"),
    ({"OutputConfig.CompilerOptions": '{"mcpu": "pentium-9000"}'}, "mcpu"),
    ({"OutputConfig.CompilerOptions": "{not json"}, "CompilerOptions"),
    ({"OutputConfig.KmsKeyId": "alias/models"}, "KmsKeyId"),
    ({"OutputConfig.S3OutputLocation": "s3://no-such-bucket-here/out/"}, "S3OutputLocation"),
    ({"InputConfig.S3Uri": "s3://kiln-tests/missing/model.tar.gz"}, "S3Uri"),
    ({"RoleArn": "arn:aws:iam::123456789012:role/someone-else"}, "RoleArn"),
    ({"ModelPackageVersionArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/p/1"},
     "ModelPackageVersionArn"),
    ({"StoppingCondition.MaxPendingTimeInSeconds": 2419201}, "MaxPendingTimeInSeconds"),
    ({"Tags": [{"Key": "aws:reserved", "Value": "x"}]}, "Tags"),
])
def test_invalid_create_is_refused_naming_the_field(alice, sm, uploaded, change, field):
    error = _error(sm.create_compilation_job, **_bad(alice, uploaded, **change))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert field in error.response["Error"]["Message"]
    assert _error(sm.describe_compilation_job, CompilationJobName="never-created").response["Error"]["Code"] \
        == "ResourceNotFound"


def test_duplicate_name_is_resource_in_use(alice, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "twice", uploaded["onnx"]))
    error = _error(sm.create_compilation_job, **job_request(alice, "TWICE", uploaded["onnx"]))
    assert error.response["Error"]["Code"] == "ResourceInUse"
    wait_for_job(sm, "twice")


def test_unknown_job_and_operation(sm):
    for call in (sm.describe_compilation_job, sm.stop_compilation_job, sm.delete_compilation_job):
        assert _error(call, CompilationJobName="nobody").response["Error"]["Code"] == "ResourceNotFound"
    error = _error(sm.describe_training_job, TrainingJobName="x")
    assert error.response["Error"]["Code"] == "UnknownOperationException"


# ---- stop, delete, time limits ---------------------------------------------------------------------------

def test_stop_kills_the_work_and_delete_keeps_the_artifacts(alice, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "to-stop", uploaded["onnx"], options=None))
    assert wait_for_job(sm, "to-stop", until={"INPROGRESS"}, timeout_s=60)["CompilationJobStatus"] == "INPROGRESS"
    error = _error(sm.delete_compilation_job, CompilationJobName="to-stop")
    assert error.response["Error"]["Code"] == "ValidationException" and "Stop it" in str(error)
    sm.stop_compilation_job(CompilationJobName="to-stop")
    assert sm.describe_compilation_job(CompilationJobName="to-stop")["CompilationJobStatus"] in ("STOPPING",
                                                                                                  "STOPPED")
    job = wait_for_job(sm, "to-stop", timeout_s=30)
    assert job["CompilationJobStatus"] == "STOPPED"
    sm.delete_compilation_job(CompilationJobName="to-stop")
    assert _error(sm.describe_compilation_job, CompilationJobName="to-stop").response["Error"]["Code"] \
        == "ResourceNotFound"
    # deleting a completed job removes the record, not the artifact
    sm.create_compilation_job(**job_request(alice, "keeps-artifact", uploaded["onnx"],
                                            output=f"s3://{BUCKET}/kept/"))
    assert wait_for_job(sm, "keeps-artifact")["CompilationJobStatus"] == "COMPLETED"
    sm.delete_compilation_job(CompilationJobName="keeps-artifact")
    assert uploaded["s3"].head_object(Bucket=BUCKET, Key="kept/model-ml_c5.tar.gz")["ContentLength"] > 0


def test_max_runtime_fails_the_job(alice, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "too-slow", uploaded["onnx"], options=None, runtime_s=2))
    job = wait_for_job(sm, "too-slow", timeout_s=60)
    assert job["CompilationJobStatus"] == "FAILED"
    assert "MaxRuntimeInSeconds" in job["FailureReason"] and "2 s" in job["FailureReason"]


def test_stop_of_a_finished_job_is_refused(alice, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "finished", uploaded["onnx"]))
    assert wait_for_job(sm, "finished")["CompilationJobStatus"] == "COMPLETED"
    assert _error(sm.stop_compilation_job, CompilationJobName="finished").response["Error"]["Code"] \
        == "ValidationException"


# ---- listing and tags ----------------------------------------------------------------------------------------

def test_list_filters_sorts_and_paginates(server, sm, alice, uploaded):
    """Jobs stopped while still queued end STOPPED at once, so many cost no compile."""
    names = [f"listed-{i:02d}" for i in range(7)]
    for name in names:
        sm.create_compilation_job(**job_request(alice, name, uploaded["onnx"]))
        sm.stop_compilation_job(CompilationJobName=name)
    for name in names:
        assert wait_for_job(sm, name)["CompilationJobStatus"] == "STOPPED"
    pages = sm.get_paginator("list_compilation_jobs").paginate(
        NameContains="LISTED", SortBy="Name", SortOrder="Descending", PaginationConfig={"PageSize": 3})
    seen = [s["CompilationJobName"] for page in pages for s in page["CompilationJobSummaries"]]
    assert seen == sorted(names, reverse=True)
    first = sm.list_compilation_jobs(NameContains="listed", MaxResults=2)
    assert len(first["CompilationJobSummaries"]) == 2 and first["NextToken"]
    assert first["CompilationJobSummaries"][0]["CompilationTargetDevice"] == "ml_c5"
    stopped = sm.list_compilation_jobs(StatusEquals="STOPPED", MaxResults=100)["CompilationJobSummaries"]
    assert set(names) <= {s["CompilationJobName"] for s in stopped}
    middle = sm.describe_compilation_job(CompilationJobName=names[3])["CreationTime"]
    later = sm.list_compilation_jobs(NameContains="listed", CreationTimeAfter=middle)["CompilationJobSummaries"]
    assert [s["CompilationJobName"] for s in later] == names[4:]
    error = _error(sm.list_compilation_jobs, SortBy="Size")
    assert error.response["Error"]["Code"] == "ValidationException" and "SortBy" in str(error)
    error = _error(sm.list_compilation_jobs, MaxResults=101)
    assert "MaxResults" in str(error)


def test_tags(sm, alice, uploaded):
    arn = sm.create_compilation_job(**job_request(alice, "tagged", uploaded["onnx"],
                                                  Tags=[{"Key": "a", "Value": "1"}]))["CompilationJobArn"]
    sm.stop_compilation_job(CompilationJobName="tagged")
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": f"k{i:02d}", "Value": str(i)} for i in range(55 - 1 - 5)])
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "a", "Value": "overwritten"}])
    tags = [t for page in sm.get_paginator("list_tags").paginate(ResourceArn=arn, PaginationConfig={"PageSize": 50})
            for t in page["Tags"]]
    assert len(tags) == 50 and {"Key": "a", "Value": "overwritten"} in tags
    error = _error(sm.add_tags, ResourceArn=arn, Tags=[{"Key": "one-too-many", "Value": "x"}])
    assert error.response["Error"]["Code"] == "ValidationException" and "50" in str(error)
    sm.delete_tags(ResourceArn=arn, TagKeys=["a", "k00", "absent"])
    keys = {t["Key"] for t in sm.list_tags(ResourceArn=arn, MaxResults=100)["Tags"]}
    assert len(keys) == 48 and "a" not in keys and "k01" in keys
    other = arn.replace(alice.account_id, "123456789012")
    assert _error(sm.list_tags, ResourceArn=other).response["Error"]["Code"] == "ResourceNotFound"


# ---- auth and tenancy ------------------------------------------------------------------------------------------

def test_auth_refusals_change_nothing(server, alice, uploaded):
    from tests.api.kiln_server import Account

    request = job_request(alice, "unauthorized", uploaded["onnx"])
    wrong_secret = Account(alice.account_id, alice.access_key_id, "x" * 40)
    unknown_key = Account(alice.account_id, "AKIAIOSFODNN7EXAMPLE", alice.secret_access_key)
    for account, code in ((wrong_secret, "InvalidSignatureException"), (unknown_key, "UnrecognizedClientException")):
        error = _error(server.client("sagemaker", account).create_compilation_job, **request)
        assert error.response["Error"]["Code"] == code
    unsigned = urllib.request.Request(f"{server.endpoint}/", data=json.dumps(request).encode(), method="POST",
                                      headers={"X-Amz-Target": "SageMaker.CreateCompilationJob",
                                               "Content-Type": "application/x-amz-json-1.1"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(unsigned)
    assert caught.value.code == 403
    assert json.loads(caught.value.read())["__type"] == "MissingAuthenticationTokenException"
    sm = server.client("sagemaker", alice)
    assert _error(sm.describe_compilation_job, CompilationJobName="unauthorized").response["Error"]["Code"] \
        == "ResourceNotFound"


def test_accounts_are_isolated(server, alice, bob, sm, uploaded):
    sm.create_compilation_job(**job_request(alice, "alices", uploaded["onnx"]))
    sm.stop_compilation_job(CompilationJobName="alices")
    bobs = server.client("sagemaker", bob)
    for call in (bobs.describe_compilation_job, bobs.stop_compilation_job, bobs.delete_compilation_job):
        assert _error(call, CompilationJobName="alices").response["Error"]["Code"] == "ResourceNotFound"
    assert all(s["CompilationJobName"] != "alices"
               for s in bobs.list_compilation_jobs(MaxResults=100)["CompilationJobSummaries"])
    # Bob cannot compile Alice's model, nor use her role; he may reuse her job's name in his own account
    error = _error(bobs.create_compilation_job, **job_request(bob, "alices", uploaded["onnx"]))
    assert "S3Uri" in str(error)
    error = _error(bobs.create_compilation_job, **{**job_request(bob, "alices", uploaded["onnx"]),
                                                   "RoleArn": alice.role_arn})
    assert "RoleArn" in str(error)
    bob_s3 = server.client("s3", bob)
    bob_s3.create_bucket(Bucket="bobs-models")
    bob_s3.put_object(Bucket="bobs-models", Key="m.tar.gz",
                      Body=uploaded["s3"].get_object(Bucket=BUCKET, Key="cnn/onnx/model.tar.gz")["Body"].read())
    arn = bobs.create_compilation_job(**job_request(bob, "alices", "s3://bobs-models/m.tar.gz",
                                                    output="s3://bobs-models/out/"))["CompilationJobArn"]
    assert bob.account_id in arn
    bobs.stop_compilation_job(CompilationJobName="alices")
    assert sm.describe_compilation_job(CompilationJobName="alices")["RoleArn"] == alice.role_arn


def test_xgboost_job_without_data_input_config(server, alice, sm, uploaded, tmp_path):
    """A tree model through the service: no DataInputConfig (AWS: XGBoost needs none), Treelite's library ships."""
    import xgboost

    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)).astype(np.float32)
    booster = xgboost.train({"objective": "binary:logistic", "max_depth": 3},
                            xgboost.DMatrix(x, label=(x[:, 0] + x[:, 1] > 0).astype(int)), num_boost_round=20)
    booster.save_model(str(tmp_path / "model.json"))
    with tarfile.open(tmp_path / "xgb.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "model.json", arcname="model.json")
    uploaded["s3"].upload_file(str(tmp_path / "xgb.tar.gz"), BUCKET, "xgb/model.tar.gz")
    request = job_request(alice, "trees", f"s3://{BUCKET}/xgb/model.tar.gz", framework="XGBOOST", options=None,
                          output=f"s3://{BUCKET}/trees/")
    del request["InputConfig"]["DataInputConfig"]
    sm.create_compilation_job(**request)
    job = wait_for_job(sm, "trees")
    assert job["CompilationJobStatus"] == "COMPLETED", job["FailureReason"]
    artifact = tmp_path / "trees.tar.gz"
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{BUCKET}/trees/model-ml_c5.tar.gz"
    uploaded["s3"].download_file(BUCKET, "trees/model-ml_c5.tar.gz", str(artifact))
    with tarfile.open(artifact) as tar:
        assert json.load(tar.extractfile("compiled.meta"))["Backend"]["Name"] in ("treelite", "onnxruntime")
    got = Model(artifact).run(x[:50])[0]
    np.testing.assert_allclose(got.reshape(-1), booster.predict(xgboost.DMatrix(x[:50])), rtol=1e-5, atol=1e-6)


def _raw(server, account, target: str, body: bytes) -> tuple[int, dict]:
    """A signed awsJson request with an exact body (botocore would refuse to send these)."""
    import urllib.error

    request = AWSRequest("POST", f"{server.endpoint}/", data=body,
                         headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"SageMaker.{target}"})
    SigV4Auth(Credentials(account.access_key_id, account.secret_access_key), "sagemaker", "us-east-1").add_auth(request)
    try:
        with urllib.request.urlopen(urllib.request.Request(request.url, data=body, headers=dict(request.headers),
                                                           method="POST"), timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _token(text: str) -> bytes:
    """A NextToken as paging.py writes one (base64url JSON), around whatever JSON text a client forged."""
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).rstrip(b"=")


@pytest.mark.parametrize("target, body, words", [
    # Forged NextTokens the store could not bind or parse (each was a 500): an id past 64 bits, a sort value
    # past 64 bits, a lone surrogate (escaped, and as raw UTF-8 bytes), JSON nested past the parser.
    ("ListCompilationJobs", b'{"NextToken": "%s"}' % _token('{"k": "CreationTime/Ascending", "v": 1, "i": %d}'
                                                            % 2**70), ["NextToken", "64 bits"]),
    ("ListCompilationJobs", b'{"NextToken": "%s"}' % _token('{"k": "CreationTime/Ascending", "v": %d, "i": 1}'
                                                            % 2**80), ["NextToken", "64 bits"]),
    ("ListCompilationJobs", b'{"SortBy": "Name", "NextToken": "%s"}' % _token(
        '{"k": "Name/Ascending", "v": "\\ud800", "i": 1}'), ["NextToken", "surrogate"]),
    ("ListCompilationJobs", b'{"SortBy": "Name", "NextToken": "%s"}' % _token(
        '{"k": "Name/Ascending", "v": "\ud800", "i": 1}'), ["NextToken", "surrogate"]),
    ("ListCompilationJobs", b'{"NextToken": "%s"}' % _token("[" * 2500 + "]" * 2500), ["NextToken"]),
    ("ListCompilationJobs", b"[" * 5000 + b"]" * 5000, ["body"]),  # nested past any parser's recursion
    ("ListCompilationJobs", b"[" * 990 + b"]" * 990, ["body"]),  # just inside the parser's, not the checks'
    ("ListCompilationJobs", b'{"MaxResults": ' + b"9" * 5000 + b"}", ["body"]),  # past int()'s digit limit
    ("ListCompilationJobs", b'{"NextToken": "\\ud800"}', ["NextToken"]),  # a lone surrogate
    ("ListCompilationJobs", b'{"NextToken": "99999999999999999999999999999"}', ["NextToken"]),
    ("DescribeCompilationJob", b'{"CompilationJobName": "\\udfff"}', ["CompilationJobName"]),
])
def test_hostile_bodies_get_a_4xx_naming_the_field(server, alice, target, body, words):
    status, error = _raw(server, alice, target, body)
    assert 400 <= status < 500, (status, error)
    for word in words:
        assert word in error.get("message", error.get("Message", "")), error


@pytest.mark.parametrize("config, words", [
    ("[" * 5000 + "]" * 5000, ["DataInputConfig"]),
    ('{"data": [' + "9" * 5000 + "]}", ["DataInputConfig"]),
])
def test_hostile_data_input_config_is_a_validation_error(alice, sm, uploaded, config, words):
    request = job_request(alice, "hostile-config", uploaded["onnx"])
    request["InputConfig"]["DataInputConfig"] = config
    error = _error(sm.create_compilation_job, **request)
    assert error.response["Error"]["Code"] == "ValidationException"
    for word in words:
        assert word in error.response["Error"]["Message"]


@pytest.mark.parametrize("where", ["OutputConfig.S3OutputLocation", "InputConfig.S3Uri", "CompilationJobName"])
def test_a_lone_surrogate_in_a_string_field_is_refused_naming_it(server, alice, uploaded, where):
    request = job_request(alice, "surrogate", uploaded["onnx"])
    section, _, name = where.rpartition(".")
    fields = request[section] if section else request
    fields[name] = fields[name] + "\ud800"
    status, error = _raw(server, alice, "CreateCompilationJob", json.dumps(request).encode())
    assert status == 400 and error["__type"].endswith("ValidationException"), error
    assert name in error["message"], error

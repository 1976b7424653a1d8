"""The real AWS CLI v1 and the SageMaker Python SDK v2, unmodified, against a real `kiln serve`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.kiln_server import Account, KilnServer, job_request, wait_for_job

AWS = str(Path(sys.executable).with_name("aws"))


@pytest.fixture(scope="module")
def account(server) -> Account:
    return server.create_account()


def aws(server: KilnServer, account: Account, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([AWS, "--endpoint-url", server.endpoint, *args], env=account.env(server.endpoint),
                          capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_aws_cli_session(server, account, models, tmp_path):
    """The README's copy-paste session: aws s3 cp, create-compilation-job from a JSON file, describe, --query."""
    aws(server, account, "s3", "mb", "s3://cli-models")
    aws(server, account, "s3", "cp", str(models / "cnn_onnx.tar.gz"), "s3://cli-models/cnn/model.tar.gz")
    assert "model.tar.gz" in aws(server, account, "s3", "ls", "s3://cli-models/cnn/").stdout
    job = job_request(account, "cli-job", "s3://cli-models/cnn/model.tar.gz", output="s3://cli-models/out/")
    (tmp_path / "job.json").write_text(json.dumps(job))
    created = aws(server, account, "sagemaker", "create-compilation-job", "--cli-input-json",
                  f"file://{tmp_path / 'job.json'}")
    assert json.loads(created.stdout)["CompilationJobArn"].endswith(":compilation-job/cli-job")
    wait_for_job(server.client("sagemaker", account), "cli-job")
    status = aws(server, account, "sagemaker", "describe-compilation-job", "--compilation-job-name", "cli-job",
                 "--query", "[CompilationJobStatus, ModelArtifacts.S3ModelArtifacts]", "--output", "text")
    assert status.stdout.split() == ["COMPLETED", "s3://cli-models/out/model-ml_c5.tar.gz"]
    aws(server, account, "s3", "cp", "s3://cli-models/out/model-ml_c5.tar.gz", str(tmp_path / "artifact.tar.gz"))
    assert (tmp_path / "artifact.tar.gz").stat().st_size > 1000


def test_aws_cli_shorthand_and_errors(server, account, models):
    aws(server, account, "s3", "mb", "s3://cli-short")
    aws(server, account, "s3", "cp", str(models / "cnn_onnx.tar.gz"), "s3://cli-short/model.tar.gz")
    created = aws(server, account, "sagemaker", "create-compilation-job", "--compilation-job-name", "short",
                  "--role-arn", account.role_arn,
                  "--input-config", "S3Uri=s3://cli-short/model.tar.gz,DataInputConfig='{\"data\":[1,3,32,32]}',"
                                    "Framework=ONNX",
                  "--output-config", "S3OutputLocation=s3://cli-short/out/,TargetDevice=ml_c5",
                  "--stopping-condition", "MaxRuntimeInSeconds=600",
                  "--tags", "Key=team,Value=cli")
    arn = json.loads(created.stdout)["CompilationJobArn"]
    aws(server, account, "sagemaker", "stop-compilation-job", "--compilation-job-name", "short")
    tags = aws(server, account, "sagemaker", "list-tags", "--resource-arn", arn, "--query", "Tags[0].Value",
               "--output", "text")
    assert tags.stdout.strip() == "cli"
    listed = aws(server, account, "sagemaker", "list-compilation-jobs", "--name-contains", "short",
                 "--query", "CompilationJobSummaries[].CompilationJobName", "--output", "text")
    assert listed.stdout.split() == ["short"]
    missing = aws(server, account, "sagemaker", "describe-compilation-job", "--compilation-job-name", "absent",
                  check=False)
    assert missing.returncode != 0 and "ResourceNotFound" in missing.stderr
    bad = aws(server, account, "sagemaker", "create-compilation-job", "--compilation-job-name", "bad_name",
              "--role-arn", account.role_arn, "--input-config",
              "S3Uri=s3://cli-short/model.tar.gz,DataInputConfig='{\"data\":[1,3,32,32]}',Framework=ONNX",
              "--output-config", "S3OutputLocation=s3://cli-short/out/,TargetDevice=ml_c5",
              "--stopping-condition", "MaxRuntimeInSeconds=600", check=False)
    assert bad.returncode != 0 and "ValidationException" in bad.stderr and "CompilationJobName" in bad.stderr


def test_sagemaker_sdk_model_compile(server, account, models, tmp_path, monkeypatch):
    """SageMaker Python SDK v2: Model.compile(...) with a Session whose clients point at Kiln."""
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # the SDK reads ~/.sagemaker config: none
    import boto3
    import sagemaker
    from sagemaker.model import Model

    s3 = server.client("s3", account)
    s3.create_bucket(Bucket="sdk-models")
    s3.upload_file(str(models / "cnn_pth.tar.gz"), "sdk-models", "cnn/model.tar.gz")
    boto_session = boto3.Session(aws_access_key_id=account.access_key_id,
                                 aws_secret_access_key=account.secret_access_key, region_name="us-east-1")
    session = sagemaker.Session(boto_session=boto_session,
                                sagemaker_client=server.client("sagemaker", account),
                                sagemaker_runtime_client=None, default_bucket="sdk-models")
    session.s3_client = s3
    session.s3_resource = boto_session.resource("s3", endpoint_url=server.endpoint)
    model = Model(image_uri="kiln/none", model_data="s3://sdk-models/cnn/model.tar.gz", role=account.role_arn,
                  sagemaker_session=session)
    compiled = model.compile(target_instance_family="ml_c5", input_shape={"input0": [1, 3, 32, 32]},
                             output_path="s3://sdk-models/compiled", role=account.role_arn, framework="pytorch",
                             framework_version="2.0", job_name="sdk-job",
                             compiler_options=json.dumps({"kiln-backend": "onnxruntime"}))
    assert compiled.model_data == "s3://sdk-models/compiled/model-ml_c5.tar.gz"
    job = session.sagemaker_client.describe_compilation_job(CompilationJobName="sdk-job")
    assert job["CompilationJobStatus"] == "COMPLETED"
    assert job["InputConfig"]["Framework"] == "PYTORCH" and job["InputConfig"]["FrameworkVersion"] == "2.0"

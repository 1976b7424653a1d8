"""The job record: state machine, ARNs, and the Describe/List wire forms checked against botocore's model."""
from __future__ import annotations

import dataclasses
import json

import pytest
from botocore.parsers import create_parser

from modelkiln.jobs.errors import IllegalTransition
from modelkiln.jobs.model import (
    COMPLETED, FAILED, INPROGRESS, STARTING, STATUSES, STOPPED, STOPPING, TERMINAL, Job, can_transition,
    describe, job_arn, parse_arn, requeue, summary, transition,
)
from modelkiln.jobs.shapes import service_model
from modelkiln.jobs.validation import validate_create_compilation_job
from tests.jobs.factories import ACCOUNT, T0, make_job

LEGAL = {  # REFERENCE.md section 1, spelled out independently of model.TRANSITIONS
    (STARTING, INPROGRESS), (INPROGRESS, COMPLETED), (INPROGRESS, FAILED),
    (STARTING, STOPPING), (INPROGRESS, STOPPING), (STOPPING, STOPPED),
    (STARTING, FAILED), (STARTING, STOPPED),
}


def wire(operation: str, body: dict) -> dict:
    """body sent as JSON and parsed by botocore as the operation's output, as a client would see it."""
    shape = service_model().operation_model(operation).output_shape
    response = {"body": json.dumps(body).encode(), "headers": {}, "status_code": 200}
    parsed = create_parser("json").parse(response, shape)
    parsed.pop("ResponseMetadata", None)
    return parsed


@pytest.mark.parametrize("current", STATUSES)
@pytest.mark.parametrize("new", STATUSES)
def test_state_machine_is_exactly_the_documented_one(current, new):
    job = make_job("job", status=current, failure_reason="x")
    assert can_transition(current, new) == ((current, new) in LEGAL)
    if (current, new) in LEGAL:
        assert transition(job, new, now=T0 + 1).status == new
    else:
        with pytest.raises(IllegalTransition):
            transition(job, new, now=T0 + 1)


def test_transition_keeps_times_and_lease_consistent():
    running = transition(make_job("job", lease_owner=None), INPROGRESS, now=T0 + 1)
    assert (running.start_time, running.last_modified_time, running.end_time) == (T0 + 1, T0 + 1, None)
    running = dataclasses.replace(running, lease_owner="w", lease_expires=T0 + 60)
    stopping = transition(running, STOPPING, now=T0 + 2)
    assert stopping.stop_requested and stopping.lease_owner == "w"  # the worker still has to kill it
    stopped = transition(stopping, STOPPED, now=T0 + 3)
    assert (stopped.end_time, stopped.start_time, stopped.lease_owner, stopped.lease_expires) == (
        T0 + 3, T0 + 1, None, None)
    assert all(not can_transition(s, n) for s in TERMINAL for n in STATUSES)


def test_failed_needs_a_reason_and_only_result_fields_change():
    with pytest.raises(ValueError, match="failure_reason"):
        transition(make_job("job"), FAILED)
    with pytest.raises(TypeError, match="status"):
        transition(make_job("job"), INPROGRESS, status=COMPLETED)


def test_requeue_only_from_inprogress():
    running = transition(make_job("job", max_pending=1800), INPROGRESS, now=T0 + 5)
    again = requeue(running, now=T0 + 100)
    assert (again.status, again.start_time, again.last_modified_time, again.pending_deadline) == (
        STARTING, None, T0 + 100, T0 + 1900)
    with pytest.raises(IllegalTransition):
        requeue(make_job("job"))


def test_arn_lower_cases_the_name_and_parses_back():
    job = make_job("ResNet-50", region="eu-west-1")
    assert job.arn == "arn:aws:sagemaker:eu-west-1:111111111111:compilation-job/resnet-50"
    assert parse_arn(job.arn) == ("eu-west-1", ACCOUNT, "resnet-50")
    assert parse_arn("arn:aws:sagemaker:eu-west-1:111111111111:training-job/x") is None
    assert job_arn("us-east-1", ACCOUNT, "A") == "arn:aws:sagemaker:us-east-1:111111111111:compilation-job/a"


def test_describe_of_a_new_job_has_every_required_member():
    out = describe(make_job("job"))
    required = service_model().shape_for("DescribeCompilationJobResponse").required_members
    assert set(required) <= set(out)
    assert out["FailureReason"] == "" and out["ModelArtifacts"] == {"S3ModelArtifacts": ""}
    for absent in ("CompilationStartTime", "CompilationEndTime", "ModelDigests", "DerivedInformation", "VpcConfig"):
        assert absent not in out
    assert isinstance(out["CreationTime"], float) and isinstance(out["LastModifiedTime"], float)
    assert wire("DescribeCompilationJob", out)["CreationTime"].timestamp() == T0


def test_describe_of_a_finished_job_parses_as_botocore_would():
    job = make_job("job", vpc_config={"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]})
    job = transition(transition(job, INPROGRESS, now=T0 + 1), COMPLETED, now=T0 + 9,
                     artifact_uri="s3://bucket/out/model.tar.gz", artifact_digest="ab" * 32,
                     derived_data_input_config='{"data": [1, 3, 224, 224]}', inference_image="kiln/onnxruntime")
    out = describe(job)
    members = service_model().shape_for("DescribeCompilationJobResponse").members
    assert set(out) == set(members) - {"ModelPackageVersionArn"}
    parsed = wire("DescribeCompilationJob", out)
    assert parsed["CompilationEndTime"].timestamp() == T0 + 9
    assert parsed["ModelArtifacts"] == {"S3ModelArtifacts": "s3://bucket/out/model.tar.gz"}
    assert parsed["ModelDigests"] == {"ArtifactDigest": "ab" * 32}
    assert parsed["DerivedInformation"] == {"DerivedDataInputConfig": '{"data": [1, 3, 224, 224]}'}
    assert parsed["VpcConfig"] == job.vpc_config


def test_summary_names_the_target_device_or_platform():
    device = summary(make_job("a"))
    assert device["CompilationTargetDevice"] == "ml_c5"
    assert not any(k.startswith("CompilationTargetPlatform") for k in device)
    platform = summary(make_job("b", platform={"Os": "LINUX", "Arch": "ARM64", "Accelerator": "MALI"}))
    assert (platform["CompilationTargetPlatformOs"], platform["CompilationTargetPlatformArch"],
            platform["CompilationTargetPlatformAccelerator"]) == ("LINUX", "ARM64", "MALI")
    assert "CompilationTargetDevice" not in platform
    assert "CompilationTargetPlatformAccelerator" not in summary(make_job("c", platform={"Os": "LINUX",
                                                                                          "Arch": "X86_64"}))
    required = service_model().shape_for("CompilationJobSummary").required_members
    parsed = wire("ListCompilationJobs", {"CompilationJobSummaries": [device, platform]})
    assert all(set(required) <= set(s) for s in parsed["CompilationJobSummaries"])


def test_from_request_keeps_the_request_as_describe_echoes_it():
    request = validate_create_compilation_job({
        "CompilationJobName": "Job-1", "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/KilnRole",
        "InputConfig": {"S3Uri": "s3://bucket/model.tar.gz", "Framework": "PYTORCH",
                        "DataInputConfig": "[[1, 3, 224, 224]]", "FrameworkVersion": "2.0"},
        "OutputConfig": {"S3OutputLocation": "s3://bucket/out", "TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"},
                         "CompilerOptions": '{"mattr": ["+neon"]}'},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600, "MaxPendingTimeInSeconds": 3600},
        "VpcConfig": {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1", "subnet-2"]},
        "Tags": [{"Key": "team", "Value": "vision"}],
    }, ACCOUNT)
    job = Job.from_request(request, ACCOUNT, "eu-central-1", now=T0)
    out = describe(job)
    assert out["InputConfig"]["DataInputConfig"] == "[[1, 3, 224, 224]]"
    assert out["OutputConfig"]["TargetPlatform"] == {"Os": "LINUX", "Arch": "ARM64"}
    assert out["StoppingCondition"] == {"MaxRuntimeInSeconds": 600, "MaxPendingTimeInSeconds": 3600}
    assert out["VpcConfig"] == {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1", "subnet-2"]}
    assert (job.status, job.creation_time, job.pending_deadline, job.tags) == (
        STARTING, T0, T0 + 3600, {"team": "vision"})
    assert job.arn.endswith(":eu-central-1:111111111111:compilation-job/job-1")

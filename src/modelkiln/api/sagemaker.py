"""The SageMaker compilation-job operations over awsJson 1.1 (REFERENCE.md section 1).

Each operation is a plain function (services, principal, params) -> response dict, run in a worker thread
because the job and object stores are blocking. Request shapes are checked by modelkiln.jobs.validation,
which reads botocore's service model.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from modelkiln.api.errors import JSON_CONTENT_TYPE, UnknownOperation, json_error
from modelkiln.api.services import Services
from modelkiln.api.signing import verify
from modelkiln.auth import Principal
from modelkiln.devices.errors import DeviceNotFound
from modelkiln.errors import ValidationError
from modelkiln.jobs import validation
from modelkiln.jobs.errors import JobNotFound
from modelkiln.jobs.model import Job, describe, parse_arn, summary
from modelkiln.storage import StorageError

TARGET_PREFIX = "SageMaker."
Operation = Callable[[Services, Principal, Any], dict[str, Any]]


async def handle(request: Request, services: Services, request_id: str) -> Response:
    try:
        body = await read_limited(request, services.max_json_body)
        verified = await verify(request, services, "sagemaker", body)
        operation = _operation(request.headers["x-amz-target"])
        params = parse_params(body)
        result = await run_in_threadpool(operation, services, verified.principal, params)
    except ClientDisconnect:
        raise  # no one left to answer: app.py logs it
    except Exception as exc:  # noqa: BLE001 - every failure becomes an awsJson error, see api/errors.py
        return json_error(exc, request_id)
    return Response(json.dumps(result), 200, media_type=JSON_CONTENT_TYPE, headers={"x-amzn-RequestId": request_id})


async def read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValidationError("body", f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _operation(target: str) -> Operation:
    name = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else ""
    if name not in OPERATIONS:
        supported = ", ".join(sorted(OPERATIONS))
        raise UnknownOperation(f"Kiln does not implement {target!r}; it serves SageMaker.{{{supported}}}.")
    return OPERATIONS[name]


def parse_params(body: bytes) -> Any:
    try:
        params = json.loads(body or b"{}")
        _check_text(params, "")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError("body", f"the request body is not JSON: {exc}") from None
    except RecursionError:  # nested deeper than the parser goes: no real request is
        raise ValidationError("body", "the request body is nested too deeply to be a SageMaker request") from None
    return params


def _check_text(value: Any, path: str) -> None:
    """Every string must be Unicode text: JSON's \\ud800 escapes decode to lone surrogates, which no name,
    URI or store can hold (they would fail later, as an internal error, far from the request)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(path or "body", "holds a lone UTF-16 surrogate (\\ud800-\\udfff): not text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path or "body")
            _check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{path}[{index}]")


# ---- operations ------------------------------------------------------------------------------------------

def create_compilation_job(services: Services, principal: Principal, params: Any) -> dict[str, Any]:
    request = validation.validate_create_compilation_job(params, principal.account_id)
    _check_locations(services, principal.account_id, request)
    job = services.jobs.create(Job.from_request(request, principal.account_id, principal.region),
                               max_active=services.max_active_jobs)
    services.notify()
    return {"CompilationJobArn": job.arn}


def _check_locations(services: Services, account_id: str, request: validation.CreateRequest) -> None:
    """The model must be readable and the output bucket the caller's, before a job is queued for them."""
    source = request.input.location
    try:
        services.objects.head_object(account_id, source.bucket, source.key)
    except StorageError as exc:
        raise ValidationError("InputConfig.S3Uri", f"cannot read {request.input.s3_uri}: {exc.message} "
                                                   "Upload the model there first (aws s3 cp model.tar.gz ...).")
    if request.options.calibration:  # the worker fetches it as the caller: it must be theirs and be there
        field = "OutputConfig.CompilerOptions.kiln-calibration"
        data = validation.parse_s3_uri(request.options.calibration, field, need_key=True)
        try:
            services.objects.head_object(account_id, data.bucket, data.key)
        except StorageError as exc:
            raise ValidationError(field, f"cannot read {request.options.calibration}: {exc.message} "
                                         "Upload the .npz there first.")
    if request.options.profile_on:  # its agent times the candidates: it must be the caller's device
        try:
            services.devices.get_device(account_id, request.options.profile_on)
        except DeviceNotFound:
            raise ValidationError("OutputConfig.CompilerOptions.kiln-profile-on",
                                  f"your account has no device {request.options.profile_on}: start `kiln agent "
                                  f"--device-name {request.options.profile_on}` on it first (`kiln devices` lists "
                                  "yours)") from None
    output = request.output.location
    try:
        services.objects.head_bucket(account_id, output.bucket)
    except StorageError as exc:
        raise ValidationError("OutputConfig.S3OutputLocation",
                              f"cannot write to bucket {output.bucket}: {exc.message} Create it first.")
    if request.output.kms_key_id and not services.objects.supports_kms:
        raise ValidationError("OutputConfig.KmsKeyId",
                              "this Kiln server keeps objects in a local directory, which cannot encrypt with "
                              "KMS; drop KmsKeyId, or ask the operator to configure an S3 object store")


def describe_compilation_job(services: Services, principal: Principal, params: Any) -> dict[str, Any]:
    name = validation.validate_job_name("DescribeCompilationJob", params)
    return describe(services.jobs.get(principal.account_id, name))


def list_compilation_jobs(services: Services, principal: Principal, params: Any) -> dict[str, Any]:
    page, token = services.jobs.list(principal.account_id, validation.validate_list_request(params))
    out: dict[str, Any] = {"CompilationJobSummaries": [summary(job) for job in page]}
    if token:
        out["NextToken"] = token
    return out


def stop_compilation_job(services: Services, principal: Principal, params: Any) -> dict[str, Any]:
    name = validation.validate_job_name("StopCompilationJob", params)
    services.jobs.request_stop(principal.account_id, name)
    services.notify()
    return {}


def delete_compilation_job(services: Services, principal: Principal, params: Any) -> dict[str, Any]:
    name = validation.validate_job_name("DeleteCompilationJob", params)
    services.jobs.delete(principal.account_id, name)
    return {}


def add_tags(services: Services, principal: Principal, params: Any) -> dict[str, Any]:
    request = validation.validate_add_tags(params)
    name = _job_of_arn(principal, request.resource_arn)
    services.jobs.add_tags(principal.account_id, name, {t.key: t.value for t in request.tags})
    return {"Tags": [{"Key": t.key, "Value": t.value} for t in request.tags]}


def list_tags(services: Services, principal: Principal, params: Any) -> dict[str, Any]:
    request = validation.validate_list_tags(params)
    name = _job_of_arn(principal, request.resource_arn)
    page, token = services.jobs.list_tags(principal.account_id, name, request.max_results, request.next_token)
    out: dict[str, Any] = {"Tags": [{"Key": k, "Value": v} for k, v in page.items()]}
    if token:
        out["NextToken"] = token
    return out


def delete_tags(services: Services, principal: Principal, params: Any) -> dict[str, Any]:
    request = validation.validate_delete_tags(params)
    name = _job_of_arn(principal, request.resource_arn)
    services.jobs.delete_tags(principal.account_id, name, request.tag_keys)
    return {}


def _job_of_arn(principal: Principal, arn: str) -> str:
    """The job name in a compilation-job ARN of the caller's account; ResourceNotFound for anything else."""
    parsed = parse_arn(arn)
    if parsed is None:
        raise ValidationError("ResourceArn", f"{arn!r} is not a compilation-job ARN; Kiln tags only compilation jobs")
    _, account_id, name = parsed
    if account_id != principal.account_id:
        raise JobNotFound(principal.account_id, name)  # another account's job: as if it did not exist
    return name


OPERATIONS: dict[str, Operation] = {
    "CreateCompilationJob": create_compilation_job,
    "DescribeCompilationJob": describe_compilation_job,
    "ListCompilationJobs": list_compilation_jobs,
    "StopCompilationJob": stop_compilation_job,
    "DeleteCompilationJob": delete_compilation_job,
    "AddTags": add_tags,
    "ListTags": list_tags,
    "DeleteTags": delete_tags,
}

"""Kiln's own awsJson operations (X-Amz-Target: Kiln.*): devices, and the profile and inference jobs that
run on them. Shapes are Kiln's service model (modelkiln.devices.validation.DATA_PATH), which boto3 also reads.

Agents long-poll PollDeviceWork: the wait is an async loop here, not a blocked worker thread, so a thousand
idle agents hold no threads.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from modelkiln.api.errors import JSON_CONTENT_TYPE, UnknownOperation, json_error
from modelkiln.api.sagemaker import parse_params, read_limited
from modelkiln.api.services import Services
from modelkiln.api.signing import verify
from modelkiln.auth import Principal
from modelkiln.devices import validation
from modelkiln.devices.model import INFERENCE, DeviceJob, describe_device, describe_job, summary, work
from modelkiln.errors import ValidationError
from modelkiln.jobs.validation import parse_s3_uri
from modelkiln.storage import StorageError

TARGET_PREFIX = "Kiln."
POLL_EVERY_S = 0.5  # how often a waiting PollDeviceWork looks for new work


async def handle(request: Request, services: Services, request_id: str) -> Response:
    try:
        body = await read_limited(request, services.max_json_body)
        verified = await verify(request, services, "kiln", body)
        name = _operation(request.headers["x-amz-target"])
        params = validation.check(name, parse_params(body))
        await run_in_threadpool(services.devices.expire)  # no job is ever seen stuck
        if name == "PollDeviceWork":
            result = await poll_device_work(services, verified.principal, params)
        else:
            result = await run_in_threadpool(OPERATIONS[name], services, verified.principal, params)
    except ClientDisconnect:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes an awsJson error, see api/errors.py
        return json_error(exc, request_id)
    return Response(json.dumps(result), 200, media_type=JSON_CONTENT_TYPE, headers={"x-amzn-RequestId": request_id})


def _operation(target: str) -> str:
    name = target[len(TARGET_PREFIX):]
    if name not in validation.operations():
        raise UnknownOperation(f"Kiln does not implement {target!r}; it serves "
                               f"Kiln.{{{', '.join(sorted(validation.operations()))}}}.")
    return name


async def poll_device_work(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    store, account, device = services.devices, principal.account_id, params["DeviceName"]
    deadline = time.monotonic() + (params.get("WaitSeconds") or 0)
    await run_in_threadpool(store.seen, account, device)
    while True:
        job = await run_in_threadpool(store.claim, account, device, services.device_lease_s)
        if job is not None:
            return {"Work": work(job, services.device_lease_s)}
        if time.monotonic() >= deadline:
            return {}
        await asyncio.sleep(POLL_EVERY_S)


def register_device(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    device = services.devices.register(principal.account_id, principal.region, params["DeviceName"],
                                       params.get("DeviceType") or "", params["Facts"])
    return {"DeviceArn": device.arn}


def describe_device_(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    return describe_device(services.devices.get_device(principal.account_id, params["DeviceName"]), time.time())


def list_devices(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    page, token = services.devices.list_devices(principal.account_id, params.get("MaxResults") or
                                                validation.DEFAULT_MAX_RESULTS, params.get("NextToken") or None)
    now = time.time()
    return {"Devices": [describe_device(d, now) for d in page], **({"NextToken": token} if token else {})}


def deregister_device(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    services.devices.deregister(principal.account_id, params["DeviceName"])
    return {}


def report_device_work(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    services.devices.report(principal.account_id, params["DeviceName"], params["JobName"], params["Status"],
                            services.device_lease_s, result=validation.report_result(params),
                            failure_reason=params.get("FailureReason") or "")
    return {}


def create_profile_job(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    return _create(services, principal, validation.create_profile_job(params))


def create_inference_job(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    return _create(services, principal, validation.create_inference_job(params))


def _create(services: Services, principal: Principal, request: validation.DeviceJobRequest) -> dict[str, Any]:
    for field in ("ModelS3Uri", "InputS3Uri"):  # the agent reads these as the caller: they must be there
        if field in request.request:
            _readable(services, principal.account_id, request.request[field], field)
    if "OutputS3Uri" in request.request:
        output = parse_s3_uri(request.request["OutputS3Uri"], "OutputS3Uri", need_key=True)
        try:
            services.objects.head_bucket(principal.account_id, output.bucket)
        except StorageError as exc:
            raise ValidationError("OutputS3Uri", f"cannot write to bucket {output.bucket}: {exc.message} "
                                                 "Create it first.") from None
    wire = dict(request.request)
    if request.kind == INFERENCE:  # an artifact of the account's own compile: its outputs get compared
        compiled = services.jobs.wrote_artifact(principal.account_id, wire["ModelS3Uri"])
        if compiled is not None:
            wire["CompilationJobName"] = compiled.name
    now = time.time()
    job = services.devices.create_job(DeviceJob(
        principal.account_id, request.name, principal.region, request.kind, "PENDING", request.device_name,
        wire, now, now, now + request.pending_s))
    return {"JobArn": job.arn}


def _readable(services: Services, account_id: str, uri: str, field: str) -> None:
    location = parse_s3_uri(uri, field, need_key=True)
    try:
        services.objects.head_object(account_id, location.bucket, location.key)
    except StorageError as exc:
        raise ValidationError(field, f"cannot read {uri}: {exc.message} Upload it there first.") from None


def describe_device_job(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    return describe_job(services.devices.get_job(principal.account_id, params["JobName"]))


def list_device_jobs(services: Services, principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    page, token = services.devices.list_jobs(principal.account_id, params.get("DeviceName"),
                                             params.get("MaxResults") or validation.DEFAULT_MAX_RESULTS,
                                             params.get("NextToken") or None)
    return {"DeviceJobs": [summary(j) for j in page], **({"NextToken": token} if token else {})}


OPERATIONS = {
    "RegisterDevice": register_device,
    "DescribeDevice": describe_device_,
    "ListDevices": list_devices,
    "DeregisterDevice": deregister_device,
    "ReportDeviceWork": report_device_work,
    "CreateProfileJob": create_profile_job,
    "CreateInferenceJob": create_inference_job,
    "DescribeDeviceJob": describe_device_job,
    "ListDeviceJobs": list_device_jobs,
}

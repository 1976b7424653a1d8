"""Device and device-job records, and their wire forms (the Kiln service model, api/models/kiln)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILE, INFERENCE = "PROFILE", "INFERENCE"
PENDING, RUNNING, COMPLETED, FAILED = "PENDING", "RUNNING", "COMPLETED", "FAILED"
TERMINAL = frozenset({COMPLETED, FAILED})
ONLINE_WITHIN_S = 60.0  # a device that asked for work this recently is ONLINE (agents poll every <= 20 s)


@dataclass(frozen=True)
class Device:
    account_id: str
    name: str
    region: str
    device_type: str
    facts: dict[str, Any]  # DeviceFacts as the agent reported them (validated against the service model)
    registered_time: float
    last_seen_time: float
    id: int | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:kiln-device/{self.name.lower()}"


@dataclass(frozen=True)
class DeviceJob:
    account_id: str
    name: str
    region: str
    kind: str
    status: str
    device_name: str
    request: dict[str, Any]  # ModelS3Uri, InputS3Uri, OutputS3Uri, Runs
    creation_time: float
    last_modified_time: float
    pending_deadline: float
    result: dict[str, Any] | None = None  # {"Profile": {...}} or {"Inference": {...}}
    failure_reason: str = ""
    start_time: float | None = None
    end_time: float | None = None
    lease_expires: float | None = None
    id: int | None = field(default=None, compare=False)

    @property
    def arn(self) -> str:
        kind = "kiln-profile-job" if self.kind == PROFILE else "kiln-inference-job"
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{kind}/{self.name.lower()}"


def describe_device(device: Device, now: float) -> dict[str, Any]:
    return {"DeviceName": device.name, "DeviceArn": device.arn, "DeviceType": device.device_type,
            "Status": "ONLINE" if now - device.last_seen_time <= ONLINE_WITHIN_S else "OFFLINE",
            "Facts": device.facts, "RegisteredTime": device.registered_time, "LastSeenTime": device.last_seen_time}


def describe_job(job: DeviceJob) -> dict[str, Any]:
    out: dict[str, Any] = {"JobName": job.name, "JobArn": job.arn, "Kind": job.kind, "Status": job.status,
                           "DeviceName": job.device_name, **job.request, "CreationTime": job.creation_time,
                           "LastModifiedTime": job.last_modified_time}
    for key, value in (("StartTime", job.start_time), ("EndTime", job.end_time)):
        if value is not None:
            out[key] = value
    if job.failure_reason:
        out["FailureReason"] = job.failure_reason
    out.update(job.result or {})
    return out


def summary(job: DeviceJob) -> dict[str, Any]:
    out = {"JobName": job.name, "JobArn": job.arn, "Kind": job.kind, "Status": job.status,
           "DeviceName": job.device_name, "CreationTime": job.creation_time}
    if job.end_time is not None:
        out["EndTime"] = job.end_time
    return out


def work(job: DeviceJob, lease_s: float) -> dict[str, Any]:
    """What PollDeviceWork hands the agent: the job and how long its lease lasts between reports."""
    return {"JobName": job.name, "JobArn": job.arn, "Kind": job.kind, **job.request, "LeaseSeconds": int(lease_s)}

"""Device and device-job records, and their wire forms (the Kiln service model, api/models/kiln)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILE, INFERENCE = "PROFILE", "INFERENCE"
PENDING, RUNNING, COMPARING, COMPLETED, FAILED = "PENDING", "RUNNING", "COMPARING", "COMPLETED", "FAILED"
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
    lease_expires: float | None = None  # RUNNING: the agent's lease; COMPARING: the comparison's (or its queue's end)
    lease_owner: str | None = None  # COMPARING: the server worker comparing; None while it waits for one
    id: int | None = field(default=None, compare=False)

    @property
    def arn(self) -> str:
        kind = "kiln-profile-job" if self.kind == PROFILE else "kiln-inference-job"
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{kind}/{self.name.lower()}"


# How an inference job's outputs compare with the source framework's on the same inputs (Comparison.Status).
MATCHED, MISMATCHED, NOT_COMPARED = "MATCHED", "MISMATCHED", "NOT_COMPARED"


@dataclass(frozen=True)
class Comparison:
    """An inference job's device outputs against the source model run by the server on the job's inputs."""

    status: str  # MATCHED | MISMATCHED | NOT_COMPARED
    compilation_job: str  # the compile job that wrote the artifact
    detail: str  # how it was judged and what was found; for NOT_COMPARED, why and what to do
    reference: str = ""  # what produced the expected outputs, e.g. "PYTORCH 2.13.0 on the Kiln server (x86_64)"
    rule: str = ""  # the check applied, e.g. "max rel err <= 1e-03 (a float32 artifact, as at compile time)"
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    cosine: float | None = None  # the worst output's
    top1_agreement: float | None = None  # share of rows of classifier-like outputs whose top class agrees

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Status": self.status, "CompilationJobName": self.compilation_job,
                               "Detail": self.detail}
        for key, value in (("Reference", self.reference), ("Rule", self.rule), ("MaxAbsErr", self.max_abs_err),
                           ("MaxRelErr", self.max_rel_err), ("Cosine", self.cosine),
                           ("Top1Agreement", self.top1_agreement)):
            if value not in (None, ""):
                out[key] = value
        return out


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

"""The compilation job record, its status state machine, and its DescribeCompilationJob / summary wire forms.

States (REFERENCE.md section 1): STARTING -> INPROGRESS -> COMPLETED | FAILED; STARTING/INPROGRESS ->
STOPPING -> STOPPED; STARTING may go straight to FAILED or STOPPED. Terminal states never change again.
`requeue` is the one move outside that graph: a job whose worker vanished goes back to STARTING for a retry.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelkiln.jobs.errors import IllegalTransition

if TYPE_CHECKING:  # only for from_request: workers import this module without botocore
    from modelkiln.jobs.validation import CreateRequest

STARTING, INPROGRESS, COMPLETED = "STARTING", "INPROGRESS", "COMPLETED"
FAILED, STOPPING, STOPPED = "FAILED", "STOPPING", "STOPPED"
STATUSES = (STARTING, INPROGRESS, COMPLETED, FAILED, STOPPING, STOPPED)
TERMINAL = frozenset({COMPLETED, FAILED, STOPPED})
ACTIVE = frozenset({STARTING, INPROGRESS, STOPPING})
TRANSITIONS: dict[str, frozenset[str]] = {
    STARTING: frozenset({INPROGRESS, STOPPING, STOPPED, FAILED}),
    INPROGRESS: frozenset({COMPLETED, FAILED, STOPPING}),
    STOPPING: frozenset({STOPPED}),
    COMPLETED: frozenset(), FAILED: frozenset(), STOPPED: frozenset(),
}
# What a status change may also set; everything else about a job is fixed at creation.
RESULT_FIELDS = frozenset({
    "failure_reason", "artifact_uri", "artifact_digest", "derived_data_input_config", "inference_image", "log_uri",
})
DEFAULT_REGION = "us-east-1"
_ARN = re.compile(r"arn:aws[a-z\-]*:sagemaker:([a-z0-9\-]*):([0-9]{12}):compilation-job/(.+)")


def job_arn(region: str, account_id: str, name: str) -> str:
    """The job's ARN; SageMaker lower-cases resource names in ARNs (so Kiln treats names case-insensitively)."""
    return f"arn:aws:sagemaker:{region}:{account_id}:compilation-job/{name.lower()}"


def parse_arn(arn: str) -> tuple[str, str, str] | None:
    """(region, account_id, name) of a compilation-job ARN; None for any other ARN."""
    match = _ARN.fullmatch(arn)
    return (match.group(1), match.group(2), match.group(3)) if match else None


@dataclass(frozen=True)
class Job:
    """Everything DescribeCompilationJob returns, plus the executor's bookkeeping. Times are epoch seconds (UTC)."""

    name: str
    account_id: str
    role_arn: str
    input_config: dict[str, Any]  # wire form, as DescribeCompilationJob echoes it
    output_config: dict[str, Any]
    stopping_condition: dict[str, Any]
    creation_time: float
    last_modified_time: float
    region: str = DEFAULT_REGION
    status: str = STARTING
    failure_reason: str = ""
    start_time: float | None = None
    end_time: float | None = None
    vpc_config: dict[str, Any] | None = None
    model_package_version_arn: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    artifact_uri: str | None = None  # the model.tar.gz object, s3://bucket/prefix/model.tar.gz
    artifact_digest: str | None = None  # sha256 hex of that object
    derived_data_input_config: str | None = None
    inference_image: str | None = None
    # executor bookkeeping, never on the wire
    attempts: int = 0  # times a worker claimed the job
    lease_owner: str | None = None
    lease_expires: float | None = None
    stop_requested: bool = False
    log_uri: str | None = None
    pending_deadline: float | None = None  # creation (or requeue) + MaxPendingTimeInSeconds
    id: int | None = None  # the store's row id; None until stored

    @property
    def arn(self) -> str:
        return job_arn(self.region, self.account_id, self.name)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_request(cls, request: CreateRequest, account_id: str, region: str = DEFAULT_REGION,
                     now: float | None = None) -> Job:
        """A new STARTING job for a validated CreateCompilationJob request."""
        now = wire_time(now)
        stopping = request.stopping.wire()
        vpc = request.vpc
        return cls(
            name=request.name, account_id=account_id, region=region, role_arn=request.role_arn,
            input_config=request.input.wire(), output_config=request.output.wire(), stopping_condition=stopping,
            creation_time=now, last_modified_time=now,
            vpc_config={"SecurityGroupIds": list(vpc.security_group_ids), "Subnets": list(vpc.subnets)}
            if vpc else None,
            tags={t.key: t.value for t in request.tags},
            pending_deadline=pending_deadline(stopping, now),
        )


def wire_time(now: float | None = None) -> float:
    """Now (or `now`) to the millisecond: what botocore sends back in a time filter (CreationTimeAfter=...),
    so a job's own times round-trip exactly and exclusive bounds exclude the job they came from."""
    return round(time.time() if now is None else now, 3)


def pending_deadline(stopping_condition: dict[str, Any], since: float) -> float | None:
    """When a job queued at `since` exceeds its MaxPendingTimeInSeconds; None when it set none."""
    limit = stopping_condition.get("MaxPendingTimeInSeconds")
    return None if limit is None else since + limit


def can_transition(current: str, new: str) -> bool:
    """Whether the state machine allows current -> new."""
    return new in TRANSITIONS.get(current, frozenset())


def transition(job: Job, new: str, *, now: float | None = None, **fields: Any) -> Job:
    """A copy of job moved to `new`, with LastModifiedTime bumped; IllegalTransition if the move is forbidden.

    `fields` may set RESULT_FIELDS. Entering INPROGRESS sets the start time, a terminal state the end time
    and drops the lease; FAILED needs a failure_reason, which must say what the user can do.
    """
    if not can_transition(job.status, new):
        raise IllegalTransition(job.name, job.status, new)
    unknown = set(fields) - RESULT_FIELDS
    if unknown:
        raise TypeError(f"transition() cannot set {', '.join(sorted(unknown))}")
    if new == FAILED and not (fields.get("failure_reason") or job.failure_reason):
        raise ValueError(f"moving {job.name} to FAILED needs a failure_reason")
    now = wire_time(now)
    changes: dict[str, Any] = {"status": new, "last_modified_time": now, **fields}
    if new == INPROGRESS and job.start_time is None:
        changes["start_time"] = now
    if new == STOPPING:
        changes["stop_requested"] = True
    if new in TERMINAL:
        changes.update(end_time=now, lease_owner=None, lease_expires=None, pending_deadline=None)
    return dataclasses.replace(job, **changes)


def requeue(job: Job, *, now: float | None = None) -> Job:
    """INPROGRESS -> STARTING for another attempt after its worker vanished; the lease and start time go."""
    if job.status != INPROGRESS:
        raise IllegalTransition(job.name, job.status, STARTING)
    now = wire_time(now)
    return dataclasses.replace(job, status=STARTING, last_modified_time=now, start_time=None, lease_owner=None,
                               lease_expires=None, pending_deadline=pending_deadline(job.stopping_condition, now))


def describe(job: Job) -> dict[str, Any]:
    """The DescribeCompilationJob response; FailureReason and ModelArtifacts are required, so always present."""
    out: dict[str, Any] = {
        "CompilationJobName": job.name,
        "CompilationJobArn": job.arn,
        "CompilationJobStatus": job.status,
        "StoppingCondition": dict(job.stopping_condition),
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "FailureReason": job.failure_reason,
        "ModelArtifacts": {"S3ModelArtifacts": job.artifact_uri or ""},
        "RoleArn": job.role_arn,
        "InputConfig": dict(job.input_config),
        "OutputConfig": dict(job.output_config),
    }
    optional = {
        "CompilationStartTime": job.start_time,
        "CompilationEndTime": job.end_time,
        "InferenceImage": job.inference_image,
        "ModelPackageVersionArn": job.model_package_version_arn,
        "ModelDigests": {"ArtifactDigest": job.artifact_digest} if job.artifact_digest else None,
        "VpcConfig": job.vpc_config,
        "DerivedInformation": {"DerivedDataInputConfig": job.derived_data_input_config}
        if job.derived_data_input_config is not None else None,
    }
    out.update((k, v) for k, v in optional.items() if v is not None)
    return out


def summary(job: Job) -> dict[str, Any]:
    """The CompilationJobSummary ListCompilationJobs returns for the job."""
    out: dict[str, Any] = {
        "CompilationJobName": job.name,
        "CompilationJobArn": job.arn,
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "CompilationJobStatus": job.status,
    }
    if job.start_time is not None:
        out["CompilationStartTime"] = job.start_time
    if job.end_time is not None:
        out["CompilationEndTime"] = job.end_time
    if job.output_config.get("TargetDevice"):
        out["CompilationTargetDevice"] = job.output_config["TargetDevice"]
    platform = job.output_config.get("TargetPlatform") or {}
    for member in ("Os", "Arch", "Accelerator"):
        if platform.get(member):
            out[f"CompilationTargetPlatform{member}"] = platform[member]
    return out

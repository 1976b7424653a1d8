"""Jobs for tests, built directly (validation has its own tests) with controllable times."""
from __future__ import annotations

from typing import Any

from modelkiln.jobs.model import Job, pending_deadline

ACCOUNT = "111111111111"
OTHER_ACCOUNT = "222222222222"
T0 = 1_700_000_000.25  # a fixed "now" with a fraction, so float round trips are checked too


def make_job(name: str, *, account: str = ACCOUNT, at: float = T0, device: str | None = "ml_c5",
             platform: dict[str, str] | None = None, max_pending: int | None = None, **fields: Any) -> Job:
    """A STARTING job created at `at`, targeting `device` (or `platform`)."""
    output: dict[str, Any] = {"S3OutputLocation": "s3://bucket/out"}
    if platform:
        output["TargetPlatform"] = platform
    elif device:
        output["TargetDevice"] = device
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": 900}
    if max_pending is not None:
        stopping["MaxPendingTimeInSeconds"] = max_pending
    return Job(
        name=name, account_id=account, role_arn=f"arn:aws:iam::{account}:role/KilnRole",
        input_config={"S3Uri": "s3://bucket/model.tar.gz", "Framework": "ONNX",
                      "DataInputConfig": '{"data": [1, 3, 224, 224]}'},
        output_config=output, stopping_condition=stopping, creation_time=at, last_modified_time=at,
        pending_deadline=pending_deadline(stopping, at), **fields)

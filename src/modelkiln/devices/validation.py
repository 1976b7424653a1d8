"""Request validation for Kiln's device operations: the shapes of Kiln's own service model (service_model/,
the same file boto3 reads through AWS_DATA_PATH), then the rules it cannot say. One record per request."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.model import ServiceModel

from modelkiln.errors import ValidationError
from modelkiln.jobs.shapes import check_shape
from modelkiln.jobs.validation import parse_s3_uri

# Point AWS_DATA_PATH here and boto3.client("kiln", endpoint_url=...) calls these operations.
DATA_PATH = Path(__file__).with_name("service_model")
DEFAULT_RUNS = 100
DEFAULT_PENDING_S = 600  # a job nobody claims within this fails, naming the device
DEFAULT_MAX_RESULTS = 50
MAX_RESULT_BYTES = 512 * 1024  # an agent's report (mostly per-layer timings) as stored


@functools.cache
def service_model() -> ServiceModel:
    path = DATA_PATH / "kiln" / "2026-12-01" / "service-2.json"
    return ServiceModel(json.loads(path.read_text()), service_name="kiln")


def operations() -> list[str]:
    return list(service_model().operation_names)


def check(operation: str, params: Any) -> dict[str, Any]:
    """Params checked against the operation's input shape (ValidationError names the member)."""
    shape = service_model().operation_model(operation).input_shape
    assert shape is not None
    check_shape(shape, params, operation)
    return params


@dataclass(frozen=True)
class DeviceJobRequest:
    kind: str  # PROFILE | INFERENCE
    name: str
    device_name: str
    request: dict[str, Any]  # the wire members the job carries: ModelS3Uri, Runs, InputS3Uri, OutputS3Uri
    pending_s: int


def create_profile_job(params: Any) -> DeviceJobRequest:
    check("CreateProfileJob", params)
    parse_s3_uri(params["ModelS3Uri"], "ModelS3Uri", need_key=True)
    return DeviceJobRequest("PROFILE", params["JobName"], params["DeviceName"],
                            {"ModelS3Uri": params["ModelS3Uri"], "Runs": params.get("Runs") or DEFAULT_RUNS},
                            params.get("MaxPendingSeconds") or DEFAULT_PENDING_S)


def create_inference_job(params: Any) -> DeviceJobRequest:
    check("CreateInferenceJob", params)
    for field in ("ModelS3Uri", "InputS3Uri", "OutputS3Uri"):
        parse_s3_uri(params[field], field, need_key=True)
    return DeviceJobRequest("INFERENCE", params["JobName"], params["DeviceName"],
                            {k: params[k] for k in ("ModelS3Uri", "InputS3Uri", "OutputS3Uri")},
                            params.get("MaxPendingSeconds") or DEFAULT_PENDING_S)


def report_result(params: dict[str, Any]) -> dict[str, Any] | None:
    """The result a COMPLETED report carries, as stored: {"Profile": ...} or {"Inference": ...}."""
    result = {k: params[k] for k in ("Profile", "Inference") if params.get(k) is not None}
    if params["Status"] == "COMPLETED" and not result:
        raise ValidationError("Profile", "a COMPLETED report must carry the job's Profile or Inference result")
    if len(json.dumps(result)) > MAX_RESULT_BYTES:
        raise ValidationError("Profile.Layers", f"the result is larger than {MAX_RESULT_BYTES} bytes; "
                                                "report fewer layers (the slowest first)")
    return result or None


"""The new-job form: its fields, the CreateCompilationJob request they make, and where an error is shown.

The form only gathers fields; the request it builds goes through the API's own validation and creation
(jobs.validation and api.sagemaker), so the console accepts and refuses exactly what the API does, and its
errors name the same fields (InputConfig.DataInputConfig: ...), shown beside the input they came from.
"""
from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, fields
from typing import Any

from modelkiln.jobs.shapes import service_model

DEFAULT_RUNTIME_S = "900"
UPLOAD_PREFIX = "console-uploads"
# The API's member names (and what they start) -> the form input an error about them is shown beside.
# Most specific first: InputConfig.FrameworkVersion must not fall to InputConfig.Framework.
ERROR_PLACES = (
    ("CompilationJobName", "name"),
    ("InputConfig.S3Uri", "model"),
    ("InputConfig.FrameworkVersion", "framework_version"),
    ("InputConfig.Framework", "framework"),
    ("InputConfig.DataInputConfig", "data_input_config"),
    ("InputConfig", "model"),
    ("OutputConfig.TargetDevice", "target_device"),
    ("OutputConfig.TargetPlatform", "target_platform"),
    ("OutputConfig.CompilerOptions", "compiler_options"),
    ("OutputConfig.S3OutputLocation", "output"),
    ("OutputConfig", "target_device"),
    ("StoppingCondition", "max_runtime"),
    ("bucket", "model"),
    ("model", "model"),
)


@dataclass(frozen=True)
class JobDraft:
    """The form's text fields as typed (the uploaded file travels beside it)."""

    name: str = ""
    bucket: str = ""
    model_uri: str = ""  # an archive already in the account's bucket, instead of an upload
    framework: str = "ONNX"
    framework_version: str = ""
    data_input_config: str = ""
    target_device: str = "ml_c5"
    target_os: str = ""
    target_arch: str = ""
    target_accelerator: str = ""
    compiler_options: str = ""
    output: str = ""
    max_runtime: str = DEFAULT_RUNTIME_S

    @classmethod
    def from_form(cls, form: Any) -> JobDraft:
        values = {f.name: form.get(f.name) for f in fields(cls)}
        return cls(**{k: v.strip() for k, v in values.items() if isinstance(v, str)})

    def upload_key(self) -> str:
        """Where an uploaded archive goes: a fresh prefix per upload, so it never replaces another job's model."""
        return f"{UPLOAD_PREFIX}/{self.name or 'job'}/{secrets.token_hex(4)}/model.tar.gz"

    def output_location(self) -> str:
        return self.output or f"s3://{self.bucket}/{self.name or 'job'}/"

    def request(self, account_id: str, model_uri: str) -> dict[str, Any]:
        """The CreateCompilationJob request, with blank fields left out as the API leaves out absent members."""
        input_config: dict[str, Any] = {"S3Uri": model_uri, "Framework": self.framework}
        if self.framework_version:
            input_config["FrameworkVersion"] = self.framework_version
        if self.data_input_config:
            input_config["DataInputConfig"] = self.data_input_config
        output_config: dict[str, Any] = {"S3OutputLocation": self.output_location()}
        if self.target_device:
            output_config["TargetDevice"] = self.target_device
        platform = {k: v for k, v in (("Os", self.target_os), ("Arch", self.target_arch),
                                      ("Accelerator", self.target_accelerator)) if v}
        if platform:
            output_config["TargetPlatform"] = platform
        if self.compiler_options:
            output_config["CompilerOptions"] = self.compiler_options
        runtime: Any = int(self.max_runtime) if self.max_runtime.isdigit() else self.max_runtime
        return {
            "CompilationJobName": self.name,
            # SageMaker requires a role; Kiln only checks that it is the caller's account's.
            "RoleArn": f"arn:aws:iam::{account_id}:role/kiln-console",
            "InputConfig": input_config,
            "OutputConfig": output_config,
            "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
        }


def error_place(api_field: str) -> str:
    """The form input an API field's error belongs beside ('' when none: shown above the form)."""
    for member, place in ERROR_PLACES:
        if api_field == member or api_field.startswith((member + ".", member + "[")):
            return place
    return ""


@dataclass(frozen=True)
class Choices:
    """The select boxes' options, from the same botocore service model the API validates against."""

    frameworks: tuple[str, ...]
    devices: tuple[str, ...]
    oses: tuple[str, ...]
    arches: tuple[str, ...]
    accelerators: tuple[str, ...]


@functools.cache
def choices() -> Choices:
    model = service_model()

    def enum(shape: str) -> tuple[str, ...]:
        return tuple(model.shape_for(shape).enum)

    return Choices(enum("Framework"), enum("TargetDevice"), enum("TargetPlatformOs"), enum("TargetPlatformArch"),
                   enum("TargetPlatformAccelerator"))


def statuses() -> tuple[str, ...]:
    return tuple(service_model().shape_for("CompilationJobStatus").enum)

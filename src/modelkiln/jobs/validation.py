"""Request validation for the compilation-job API: botocore's shapes first, then Kiln's own rules.

One entry point per operation; each returns a frozen record, so the layers above never hold raw dicts.
Shape checks live in `shapes.py`; the rules here are what the service model cannot say.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from modelkiln.errors import ValidationError
from modelkiln.jobs.shapes import UnknownOperationError, parse_timestamp, validate_input
from modelkiln.literal import parse_literal
from modelkiln.targets import CompilerOptions, Target, parse_compiler_options, resolve
from modelkiln.targets.catalog import UnsupportedTarget

__all__ = [
    "AddTagsRequest", "CreateRequest", "DeleteTagsRequest", "InputSpec", "ListRequest", "ListTagsRequest",
    "OutputSpec", "S3Location", "StoppingCondition", "Tag", "UnknownOperationError", "VpcConfig",
    "parse_s3_uri", "validate_add_tags", "validate_create_compilation_job", "validate_delete_tags",
    "validate_input", "validate_job_name", "validate_list_request", "validate_list_tags",
]

# botocore's MaxRuntimeInSeconds doc: "For compilation jobs ... We recommend starting with 900 seconds"
# (its "default 1 day, max 28 days" is for other jobs); 900 s is also the SageMaker SDK's compile_max_run.
DEFAULT_MAX_RUNTIME_S = 900
# Not documented for these two calls; 10 is what SageMaker documents for most List* calls, and 50 is
# ListTags' model minimum.
DEFAULT_LIST_MAX_RESULTS = 10
DEFAULT_LIST_TAGS_MAX_RESULTS = 50
JOB_NAME_OPERATIONS = ("DescribeCompilationJob", "StopCompilationJob", "DeleteCompilationJob")
DEFAULT_SORT_BY, DEFAULT_SORT_ORDER = "CreationTime", "Ascending"  # documented in the model
NO_REGISTRY = ("Kiln has no model-package registry; pass InputConfig with an S3Uri to the model "
               "archive instead")
_ROLE_ACCOUNT = re.compile(r"arn:aws[a-z\-]*:iam::(\d{12}):role/")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")  # S3's bucket naming rules


@dataclass(frozen=True)
class S3Location:
    """A bucket and an object key (or key prefix)."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class InputSpec:
    """InputConfig: where the model is and what it is; `data_inputs` is DataInputConfig parsed."""

    s3_uri: str
    location: S3Location
    framework: str
    framework_version: str | None = None
    data_input_config: str | None = None
    data_inputs: dict[str, Any] | list[Any] | None = None

    def wire(self) -> dict[str, Any]:
        """The InputConfig as DescribeCompilationJob returns it."""
        return _present(S3Uri=self.s3_uri, Framework=self.framework,
                        FrameworkVersion=self.framework_version, DataInputConfig=self.data_input_config)


@dataclass(frozen=True)
class OutputSpec:
    """OutputConfig as given; the resolved target and parsed options live on CreateRequest."""

    s3_output_location: str
    location: S3Location
    target_device: str | None = None
    target_platform: dict[str, str] | None = None  # {"Os", "Arch"[, "Accelerator"]}
    compiler_options: str | None = None
    kms_key_id: str | None = None  # recorded; Kiln's object store does not use KMS

    def wire(self) -> dict[str, Any]:
        """The OutputConfig as DescribeCompilationJob returns it."""
        return _present(S3OutputLocation=self.s3_output_location, TargetDevice=self.target_device,
                        TargetPlatform=self.target_platform, CompilerOptions=self.compiler_options,
                        KmsKeyId=self.kms_key_id)


@dataclass(frozen=True)
class StoppingCondition:
    """Time limits in seconds; pending time bounds how long a job may wait in the queue."""

    max_runtime_in_seconds: int = DEFAULT_MAX_RUNTIME_S
    max_wait_time_in_seconds: int | None = None
    max_pending_time_in_seconds: int | None = None

    def wire(self) -> dict[str, Any]:
        """The StoppingCondition as DescribeCompilationJob returns it."""
        return _present(MaxRuntimeInSeconds=self.max_runtime_in_seconds,
                        MaxWaitTimeInSeconds=self.max_wait_time_in_seconds,
                        MaxPendingTimeInSeconds=self.max_pending_time_in_seconds)


@dataclass(frozen=True)
class VpcConfig:
    """Recorded and echoed; Kiln's workers do not run inside a customer VPC."""

    security_group_ids: tuple[str, ...]
    subnets: tuple[str, ...]


@dataclass(frozen=True)
class Tag:
    key: str
    value: str


@dataclass(frozen=True)
class CreateRequest:
    """A CreateCompilationJob request that passed every check."""

    name: str
    role_arn: str
    input: InputSpec
    output: OutputSpec
    target: Target | None  # None: a target Kiln does not support; the job will fail saying why
    options: CompilerOptions
    stopping: StoppingCondition
    vpc: VpcConfig | None = None
    tags: tuple[Tag, ...] = ()


@dataclass(frozen=True)
class ListRequest:
    """ListCompilationJobs filters, with the documented defaults filled in; times are aware UTC."""

    next_token: str | None = None
    max_results: int = DEFAULT_LIST_MAX_RESULTS
    creation_time_after: datetime | None = None
    creation_time_before: datetime | None = None
    last_modified_time_after: datetime | None = None
    last_modified_time_before: datetime | None = None
    name_contains: str | None = None
    status_equals: str | None = None
    sort_by: str = DEFAULT_SORT_BY
    sort_order: str = DEFAULT_SORT_ORDER


@dataclass(frozen=True)
class AddTagsRequest:
    resource_arn: str
    tags: tuple[Tag, ...]


@dataclass(frozen=True)
class ListTagsRequest:
    resource_arn: str
    next_token: str | None = None
    max_results: int = DEFAULT_LIST_TAGS_MAX_RESULTS


@dataclass(frozen=True)
class DeleteTagsRequest:
    resource_arn: str
    tag_keys: tuple[str, ...]


# ---- entry points ---------------------------------------------------------------------------------

def validate_create_compilation_job(
    params: Any, account_id: str, *, s3_hosts: tuple[str, ...] = ()
) -> CreateRequest:
    """Check a CreateCompilationJob body (shapes, then Kiln's rules) and return its record.

    `s3_hosts`: hosts an https:// S3Uri may name (path-style, Kiln's own S3 endpoint); empty allows any.
    """
    validate_input("CreateCompilationJob", params)
    check_role_account(params["RoleArn"], account_id)
    input_ = input_spec(params.get("InputConfig"), params.get("ModelPackageVersionArn"), s3_hosts)
    output = output_spec(params["OutputConfig"])
    options = parse_compiler_options(output.compiler_options)
    try:
        target: Target | None = resolve(options, output.target_device, output.target_platform)
    except UnsupportedTarget:
        target = None  # a valid request for a target Kiln cannot build: the job is created and FAILED with why

    vpc = params.get("VpcConfig")
    return CreateRequest(
        name=params["CompilationJobName"],
        role_arn=params["RoleArn"],
        input=input_,
        output=output,
        target=target,
        options=options,
        stopping=stopping_condition(params["StoppingCondition"]),
        vpc=VpcConfig(tuple(vpc["SecurityGroupIds"]), tuple(vpc["Subnets"])) if vpc else None,
        tags=tags(params.get("Tags") or [], "Tags"),
    )


def validate_job_name(operation: str, params: Any) -> str:
    """Check a Describe/Stop/DeleteCompilationJob body; return the job name."""
    if operation not in JOB_NAME_OPERATIONS:
        raise ValueError(f"{operation} does not take a job name alone; use its own validate_ function")
    validate_input(operation, params)
    return params["CompilationJobName"]


def validate_list_request(params: Any) -> ListRequest:
    """Check a ListCompilationJobs body; return its filters with defaults filled in."""
    validate_input("ListCompilationJobs", params)
    return ListRequest(
        next_token=params.get("NextToken") or None,  # "" is how some clients say "first page"
        max_results=_or(params.get("MaxResults"), DEFAULT_LIST_MAX_RESULTS),
        creation_time_after=_time(params, "CreationTimeAfter"),
        creation_time_before=_time(params, "CreationTimeBefore"),
        last_modified_time_after=_time(params, "LastModifiedTimeAfter"),
        last_modified_time_before=_time(params, "LastModifiedTimeBefore"),
        name_contains=params.get("NameContains"),
        status_equals=params.get("StatusEquals"),
        sort_by=_or(params.get("SortBy"), DEFAULT_SORT_BY),
        sort_order=_or(params.get("SortOrder"), DEFAULT_SORT_ORDER),
    )


def validate_add_tags(params: Any) -> AddTagsRequest:
    """Check an AddTags body."""
    validate_input("AddTags", params)
    return AddTagsRequest(params["ResourceArn"], tags(params["Tags"], "Tags"))


def validate_list_tags(params: Any) -> ListTagsRequest:
    """Check a ListTags body."""
    validate_input("ListTags", params)
    return ListTagsRequest(params["ResourceArn"], params.get("NextToken") or None,
                           _or(params.get("MaxResults"), DEFAULT_LIST_TAGS_MAX_RESULTS))


def validate_delete_tags(params: Any) -> DeleteTagsRequest:
    """Check a DeleteTags body."""
    validate_input("DeleteTags", params)
    return DeleteTagsRequest(params["ResourceArn"], tuple(dict.fromkeys(params["TagKeys"])))


# ---- rules (each runs after the shape check, so types, enums and patterns already hold) -------------

def check_role_account(role_arn: str, account_id: str) -> None:
    """The role must belong to the calling account."""
    match = _ROLE_ACCOUNT.match(role_arn)
    if match is None or match.group(1) != account_id:
        owner = match.group(1) if match else "unknown"
        raise ValidationError("RoleArn", f"role {role_arn!r} belongs to account {owner}; "
                                         f"use a role of the calling account {account_id}")


def input_spec(
    config: dict[str, Any] | None, package_arn: str | None, s3_hosts: tuple[str, ...]
) -> InputSpec:
    """Exactly one of InputConfig / ModelPackageVersionArn (Kiln only takes InputConfig); parse it."""
    if package_arn is not None and config is not None:
        raise ValidationError(
            "ModelPackageVersionArn", "give exactly one of InputConfig and ModelPackageVersionArn, not both")
    if package_arn is not None:
        raise ValidationError("ModelPackageVersionArn", NO_REGISTRY)
    if config is None:
        raise ValidationError("InputConfig", "give InputConfig (S3Uri, Framework, DataInputConfig): it is "
                                             "required here, as Kiln takes no ModelPackageVersionArn")
    framework, text = config["Framework"], config.get("DataInputConfig")
    return InputSpec(
        s3_uri=config["S3Uri"],
        location=parse_s3_uri(config["S3Uri"], "InputConfig.S3Uri", need_key=True, https_hosts=s3_hosts),
        framework=framework,
        framework_version=config.get("FrameworkVersion"),
        data_input_config=text,
        data_inputs=data_inputs(text, framework) if text is not None else None,
    )


def data_inputs(text: str, framework: str) -> dict[str, Any] | list[Any]:
    """DataInputConfig parsed (JSON or Python literal): a dict of input shapes, or for PYTORCH also a list."""
    field = "InputConfig.DataInputConfig"
    parsed = parse_literal(text, field)
    # PyTorch: a list of shapes; XGBoost/scikit-learn: one bare [rows, features] shape, as AWS documents
    if isinstance(parsed, dict) or (isinstance(parsed, list) and framework in ("PYTORCH", "XGBOOST", "SKLEARN")):
        return parsed
    lists = " (or, for PYTORCH, a list of shapes)" if framework != "PYTORCH" else " or a list of shapes"
    example = '{"data": [1, 3, 224, 224]}'
    raise ValidationError(field, f"must map input names to shapes, e.g. {example}{lists}; "
                                 f"got {type(parsed).__name__}")


def output_spec(config: dict[str, Any]) -> OutputSpec:
    """Exactly one of TargetDevice / TargetPlatform; S3OutputLocation is s3://bucket[/prefix]."""
    device, platform_ = config.get("TargetDevice"), config.get("TargetPlatform")
    if (device is None) == (platform_ is None):
        raise ValidationError("OutputConfig", "give exactly one of TargetDevice and TargetPlatform"
                                              + (", not both" if device is not None else ""))
    return OutputSpec(
        s3_output_location=config["S3OutputLocation"],
        location=parse_s3_uri(config["S3OutputLocation"], "OutputConfig.S3OutputLocation"),
        target_device=device,
        target_platform={k: v for k, v in platform_.items() if v is not None} if platform_ else None,
        compiler_options=config.get("CompilerOptions"),
        kms_key_id=config.get("KmsKeyId"),
    )


def stopping_condition(config: dict[str, Any]) -> StoppingCondition:
    """StoppingCondition with MaxRuntimeInSeconds defaulted; the model already bounds each value."""
    return StoppingCondition(
        max_runtime_in_seconds=_or(config.get("MaxRuntimeInSeconds"), DEFAULT_MAX_RUNTIME_S),
        max_wait_time_in_seconds=config.get("MaxWaitTimeInSeconds"),
        max_pending_time_in_seconds=config.get("MaxPendingTimeInSeconds"),
    )


def tags(raw: list[dict[str, str]], field: str) -> tuple[Tag, ...]:
    """Tags as records; keys unique, and none in AWS's reserved `aws:` namespace."""
    seen: set[str] = set()
    for i, tag in enumerate(raw):
        if tag["Key"].lower().startswith("aws:"):
            raise ValidationError(f"{field}[{i}].Key", "keys starting with 'aws:' are reserved for AWS")
        if tag["Key"] in seen:
            raise ValidationError(f"{field}[{i}].Key", f"duplicate tag key {tag['Key']!r}")
        seen.add(tag["Key"])
    return tuple(Tag(t["Key"], t["Value"]) for t in raw)


def parse_s3_uri(uri: str, field: str, *, need_key: bool = False, https_hosts: tuple[str, ...] | None = None
                 ) -> S3Location:
    """s3://bucket/key, or (where https_hosts is not None) path-style https://host/bucket/key."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
    elif uri.startswith("https://") and https_hosts is not None:
        parts = urlsplit(uri)
        if https_hosts and parts.netloc not in https_hosts:
            raise ValidationError(field, f"https:// URIs must name Kiln's S3 endpoint "
                                         f"({', '.join(https_hosts)}); got host {parts.netloc!r}")
        if parts.query or parts.fragment:
            raise ValidationError(field, "must not carry a query or fragment")
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
    else:
        forms = "s3://bucket[/prefix]"
        if https_hosts is not None:
            forms = "s3://bucket/key or https://host/bucket/key"
        raise ValidationError(field, f"must be {forms}; got {uri[:100]!r}")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValidationError(field, f"{bucket!r} is not a valid bucket name "
                                     "(3-63 characters: lower-case letters, digits, '.', '-')")
    if need_key and (not key or key.endswith("/")):
        raise ValidationError(field, "must name the model archive object (e.g. s3://bucket/model.tar.gz), "
                                     "not a bucket or prefix")
    return S3Location(bucket, key)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _time(params: dict[str, Any], name: str) -> datetime | None:
    value = params.get(name)
    return None if value is None else parse_timestamp(value, name)


def _present(**members: Any) -> dict[str, Any]:
    return {k: v for k, v in members.items() if v is not None}

"""Request validation: botocore's shapes (types, enums, patterns, bounds) and Kiln's semantic rules."""
from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from modelkiln.errors import ValidationError
from modelkiln.jobs import shapes
from modelkiln.jobs.validation import (
    DEFAULT_MAX_RUNTIME_S, JOB_NAME_OPERATIONS, Tag, UnknownOperationError, validate_add_tags,
    validate_create_compilation_job, validate_delete_tags, validate_input, validate_job_name,
    validate_list_request, validate_list_tags,
)

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/service-role/KilnRole"
JOB_ARN = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:compilation-job/job-1"
DELETE = object()  # marks a member to remove in `changed`
PACKAGE_ARN = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:model-package/p/1"


def platform(**members) -> dict:
    """Edits that swap TargetDevice for a TargetPlatform."""
    return {"OutputConfig__TargetDevice": DELETE, "OutputConfig__TargetPlatform": members}


def create_request() -> dict:
    return {
        "CompilationJobName": "cnn-c5-1",
        "RoleArn": ROLE,
        "InputConfig": {"S3Uri": "s3://models/cnn/model.tar.gz", "Framework": "ONNX",
                        "DataInputConfig": '{"data": [1, 3, 224, 224]}', "FrameworkVersion": "1.17"},
        "OutputConfig": {"S3OutputLocation": "s3://compiled/cnn", "TargetDevice": "ml_c5"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        "Tags": [{"Key": "team", "Value": "vision"}],
    }


def changed(request: dict, **edits) -> dict:
    """A copy of request with dotted members ("OutputConfig.TargetDevice") set, or removed with DELETE."""
    out = copy.deepcopy(request)
    for path, value in edits.items():
        *parents, leaf = path.split("__")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


def rejected(call, *args) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        call(*args)
    return info.value


def create(params: dict):
    return validate_create_compilation_job(params, ACCOUNT)


# ---- the two requests that pass ---------------------------------------------------------------------

def test_valid_onnx_request_for_ml_c5_gives_the_record():
    req = create(create_request())
    assert req.name == "cnn-c5-1" and req.role_arn == ROLE
    assert (req.input.location.bucket, req.input.location.key) == ("models", "cnn/model.tar.gz")
    assert req.input.framework == "ONNX" and req.input.framework_version == "1.17"
    assert req.input.data_inputs == {"data": [1, 3, 224, 224]}
    assert (req.output.location.bucket, req.output.location.key) == ("compiled", "cnn")
    assert req.target.name == "ml_c5" and req.target.arch == "x86_64" and req.target.mcpu == "skylake-avx512"
    assert req.stopping.max_runtime_in_seconds == 600
    assert req.tags == (Tag("team", "vision"),) and req.vpc is None
    assert req.input.wire() == create_request()["InputConfig"]
    assert req.output.wire() == create_request()["OutputConfig"]


def test_target_platform_with_python_style_compiler_options():
    params = changed(create_request(), OutputConfig={
        "S3OutputLocation": "s3://compiled/arm/", "TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"},
        "CompilerOptions": "{'mcpu': 'cortex-a72', 'mattr': ['+neon', '+crc']}"})
    req = create(params)
    assert req.target.arch == "aarch64" and req.target.mcpu == "cortex-a72"
    assert req.options.mcpu == "cortex-a72" and req.options.mattr == ("+neon", "+crc")
    assert req.output.target_platform == {"Os": "LINUX", "Arch": "ARM64"} and req.output.target_device is None


def test_defaults_pytorch_list_https_uri_and_vpc():
    params = changed(
        create_request(), StoppingCondition={}, Tags=DELETE,
        InputConfig={"S3Uri": "https://kiln.local:8080/models/a%20b/model.tar.gz", "Framework": "PYTORCH",
                     "DataInputConfig": "[[1, 3, 224, 224], [1, 10]]"},
        VpcConfig={"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1", "subnet-2"]})
    req = validate_create_compilation_job(params, ACCOUNT, s3_hosts=("kiln.local:8080",))
    assert req.stopping.max_runtime_in_seconds == DEFAULT_MAX_RUNTIME_S == 900
    assert req.stopping.wire() == {"MaxRuntimeInSeconds": 900}
    assert (req.input.location.bucket, req.input.location.key) == ("models", "a b/model.tar.gz")
    assert req.input.data_inputs == [[1, 3, 224, 224], [1, 10]]
    assert req.vpc is not None and req.vpc.subnets == ("subnet-1", "subnet-2") and req.tags == ()


# ---- CreateCompilationJob rejections: (edits, field, words in the message) ------------------------------

TAG = {"Key": "k", "Value": "v"}
CREATE_REJECTIONS = {
    # patterns and lengths
    "name with _": ({"CompilationJobName": "my_job"}, "CompilationJobName", "regular expression pattern"),
    "name starts with -": ({"CompilationJobName": "-job"}, "CompilationJobName", "pattern"),
    "name of 64": ({"CompilationJobName": "a" * 64}, "CompilationJobName", "less than or equal to 63"),
    "empty name": ({"CompilationJobName": ""}, "CompilationJobName", "greater than or equal to 1"),
    "role arn of a user": ({"RoleArn": f"arn:aws:iam::{ACCOUNT}:user/alice"}, "RoleArn", "pattern"),
    "role arn short account": ({"RoleArn": "arn:aws:iam::12345:role/KilnRole"}, "RoleArn", "pattern"),
    "role of another account": ({"RoleArn": "arn:aws:iam::210987654321:role/KilnRole"}, "RoleArn",
                                "account 210987654321"),
    "s3uri ftp": ({"InputConfig__S3Uri": "ftp://models/model.tar.gz"}, "InputConfig.S3Uri", "pattern"),
    "s3uri bucket only": ({"InputConfig__S3Uri": "s3://models/"}, "InputConfig.S3Uri", "model archive"),
    "s3uri bad bucket": ({"InputConfig__S3Uri": "s3://My_Bucket/m.tar.gz"}, "InputConfig.S3Uri", "bucket"),
    "output https": ({"OutputConfig__S3OutputLocation": "https://h/b/out"}, "OutputConfig.S3OutputLocation",
                     "s3://bucket[/prefix]"),
    "output not a uri": ({"OutputConfig__S3OutputLocation": "compiled/out"}, "OutputConfig.S3OutputLocation",
                         "pattern"),
    "framework version word": ({"InputConfig__FrameworkVersion": "latest"}, "InputConfig.FrameworkVersion",
                               "pattern"),
    "framework version long": ({"InputConfig__FrameworkVersion": "1.2.3.4.5.6"},
                               "InputConfig.FrameworkVersion", "less than or equal to 10"),
    "kms key id spaces": ({"OutputConfig__KmsKeyId": "my key"}, "OutputConfig.KmsKeyId", "pattern"),
    "options shorter than 3": ({"OutputConfig__CompilerOptions": "{}"}, "OutputConfig.CompilerOptions",
                               "greater than or equal to 3"),
    "options with a newline": ({"OutputConfig__CompilerOptions": '{"mcpu":\n"x"}'},
                               "OutputConfig.CompilerOptions", "pattern: .*"),
    "empty data input config": ({"InputConfig__DataInputConfig": ""}, "InputConfig.DataInputConfig",
                                "greater than or equal to 1"),
    # enums
    "framework": ({"InputConfig__Framework": "CAFFE"}, "InputConfig.Framework",
                  "enum value set: [TENSORFLOW"),
    "framework lower case": ({"InputConfig__Framework": "onnx"}, "InputConfig.Framework", "enum"),
    "target device": ({"OutputConfig__TargetDevice": "ml_c99"}, "OutputConfig.TargetDevice", "ml_c5"),
    "os": (platform(Os="WINDOWS", Arch="X86_64"), "OutputConfig.TargetPlatform.Os", "[ANDROID, LINUX]"),
    "arch": (platform(Os="LINUX", Arch="RISCV"), "OutputConfig.TargetPlatform.Arch", "ARM_EABIHF"),
    "accelerator": (platform(Os="LINUX", Arch="ARM64", Accelerator="TPU"),
                    "OutputConfig.TargetPlatform.Accelerator", "NVIDIA"),
    # exactly-one-of rules
    "device and platform": ({"OutputConfig__TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"}},
                            "OutputConfig", "not both"),
    "neither device nor platform": ({"OutputConfig__TargetDevice": DELETE}, "OutputConfig", "exactly one"),
    "input and package": ({"ModelPackageVersionArn": PACKAGE_ARN}, "ModelPackageVersionArn", "not both"),
    "neither input nor package": ({"InputConfig": DELETE}, "InputConfig", "required"),
    "package only": ({"InputConfig": DELETE, "ModelPackageVersionArn": PACKAGE_ARN}, "ModelPackageVersionArn",
                     "model-package registry"),
    "package arn pattern": ({"InputConfig": DELETE, "ModelPackageVersionArn": "arn:aws:sagemaker:x:1:p"},
                            "ModelPackageVersionArn", "pattern"),
    # DataInputConfig / CompilerOptions content
    "data input config malformed": ({"InputConfig__DataInputConfig": "{'data': [1, 3"},
                                    "InputConfig.DataInputConfig", "neither JSON nor a Python literal"),
    "data input config a list for ONNX": ({"InputConfig__DataInputConfig": "[[1, 3, 224, 224]]"},
                                          "InputConfig.DataInputConfig", "PYTORCH"),
    "data input config a string": ({"InputConfig__DataInputConfig": '"data"'}, "InputConfig.DataInputConfig",
                                   "got str"),
    "options malformed": ({"OutputConfig__CompilerOptions": "{'mcpu': "}, "OutputConfig.CompilerOptions",
                          "neither JSON"),
    "options a list": ({"OutputConfig__CompilerOptions": "[1, 2]"}, "OutputConfig.CompilerOptions", "object"),
    "options unknown key": ({"OutputConfig__CompilerOptions": '{"bogus": 1}'},
                            "OutputConfig.CompilerOptions.bogus", "unknown option"),
    "options unknown cpu": ({"OutputConfig__CompilerOptions": '{"mcpu": "pentium9"}'},
                            "OutputConfig.CompilerOptions.mcpu", "unknown CPU"),
    # required members, types, unknown members
    "no name": ({"CompilationJobName": DELETE}, "CompilationJobName", "must not be null"),
    "no role": ({"RoleArn": DELETE}, "RoleArn", "must not be null"),
    "no output config": ({"OutputConfig": DELETE}, "OutputConfig", "must not be null"),
    "no stopping condition": ({"StoppingCondition": DELETE}, "StoppingCondition", "must not be null"),
    "null role": ({"RoleArn": None}, "RoleArn", "must not be null"),
    "no framework": ({"InputConfig__Framework": DELETE}, "InputConfig.Framework", "must not be null"),
    "no s3 output location": ({"OutputConfig__S3OutputLocation": DELETE}, "OutputConfig.S3OutputLocation",
                              "null"),
    "platform without arch": (platform(Os="LINUX"), "OutputConfig.TargetPlatform.Arch", "must not be null"),
    "runtime as string": ({"StoppingCondition__MaxRuntimeInSeconds": "900"},
                          "StoppingCondition.MaxRuntimeInSeconds", "must be an integer"),
    "runtime as bool": ({"StoppingCondition__MaxRuntimeInSeconds": True},
                        "StoppingCondition.MaxRuntimeInSeconds", "integer"),
    "runtime as float": ({"StoppingCondition__MaxRuntimeInSeconds": 9.5},
                         "StoppingCondition.MaxRuntimeInSeconds", "integer"),
    "runtime past int32": ({"StoppingCondition__MaxRuntimeInSeconds": 2**31},
                           "StoppingCondition.MaxRuntimeInSeconds", "2147483647"),
    "runtime 0": ({"StoppingCondition__MaxRuntimeInSeconds": 0}, "StoppingCondition.MaxRuntimeInSeconds",
                  "value greater than or equal to 1"),
    "pending too short": ({"StoppingCondition__MaxPendingTimeInSeconds": 60},
                          "StoppingCondition.MaxPendingTimeInSeconds", "greater than or equal to 1800"),
    "pending too long": ({"StoppingCondition__MaxPendingTimeInSeconds": 2419201},
                         "StoppingCondition.MaxPendingTimeInSeconds", "less than or equal to 2419200"),
    "name as number": ({"CompilationJobName": 7}, "CompilationJobName", "must be a string"),
    "output config as string": ({"OutputConfig": "s3://x"}, "OutputConfig", "JSON object"),
    "tags as object": ({"Tags": {"k": "v"}}, "Tags", "JSON array"),
    "unknown top-level member": ({"Priority": 1}, "Priority", "CompilationJobName, RoleArn"),
    "misspelt member": ({"RoleArn": DELETE, "RoleARN": ROLE}, "RoleARN", "unknown member"),
    "unknown nested member": (platform(Os="LINUX", Arch="ARM64", Cpu="a72"),
                              "OutputConfig.TargetPlatform.Cpu", "Os, Arch, Accelerator"),
    # tags and VPC
    "51 tags": ({"Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(51)]}, "Tags",
                "length less than or equal to 50"),
    "tag key of 129": ({"Tags": [TAG | {"Key": key} for key in ("a", "b", "c", "k" * 129)]}, "Tags[3].Key",
                       "less than or equal to 128"),
    "empty tag key": ({"Tags": [{"Key": "", "Value": "v"}]}, "Tags[0].Key", "greater than or equal to 1"),
    "tag value of 257": ({"Tags": [{"Key": "k", "Value": "v" * 257}]}, "Tags[0].Value", "256"),
    "tag key with #": ({"Tags": [{"Key": "a#b", "Value": "v"}]}, "Tags[0].Key", "pattern"),
    "tag without value": ({"Tags": [{"Key": "k"}]}, "Tags[0].Value", "must not be null"),
    "tag key aws:": ({"Tags": [{"Key": "AWS:owner", "Value": "v"}]}, "Tags[0].Key", "reserved"),
    "duplicate tag key": ({"Tags": [TAG, TAG]}, "Tags[1].Key", "duplicate"),
    "six security groups": ({"VpcConfig": {"SecurityGroupIds": list("abcdef"), "Subnets": ["s"]}},
                            "VpcConfig.SecurityGroupIds", "less than or equal to 5"),
    "subnet with _": ({"VpcConfig": {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet_1"]}},
                      "VpcConfig.Subnets[0]", "pattern"),
    "vpc without subnets": ({"VpcConfig": {"SecurityGroupIds": ["sg-1"]}}, "VpcConfig.Subnets", "null"),
}


@pytest.mark.parametrize("edits, field, words", CREATE_REJECTIONS.values(), ids=CREATE_REJECTIONS.keys())
def test_create_rejection_names_the_field(edits, field, words):
    error = rejected(create, changed(create_request(), **edits))
    assert error.field == field, error
    assert words in error.message, error


@pytest.mark.parametrize("edits", [{"OutputConfig__TargetDevice": "ml_inf1"}, platform(Os="LINUX", Arch="ARM_EABI")])
def test_valid_request_for_an_unsupported_target_is_accepted_without_a_target(edits):
    """The job is created and then FAILED with the catalog's reason (see tests/api), as Neo fails what it can't build."""
    assert create(changed(create_request(), **edits)).target is None


def test_messages_read_like_aws():
    error = rejected(create, changed(create_request(), CompilationJobName="x_y"))
    assert error.message == ("Value 'x_y' failed to satisfy constraint: Member must satisfy regular "
                             "expression pattern: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
    long = rejected(create, changed(create_request(), InputConfig__DataInputConfig="x" * 20000))
    assert len(long.message) < 200 and "..." in long.message  # a huge value is cut, not echoed


def test_https_uri_must_name_kiln_endpoint_when_hosts_are_given():
    params = changed(create_request(), InputConfig__S3Uri="https://s3.amazonaws.com/models/model.tar.gz")
    assert create(params).input.location.key == "model.tar.gz"  # no hosts given: any host, path-style
    with pytest.raises(ValidationError, match="Kiln's S3 endpoint") as info:
        validate_create_compilation_job(params, ACCOUNT, s3_hosts=("kiln.local:8080",))
    assert info.value.field == "InputConfig.S3Uri"


def test_non_object_body_is_rejected():
    assert rejected(create, ["CompilationJobName"]).field == "CreateCompilationJob"


# ---- the other operations -----------------------------------------------------------------------------

@pytest.mark.parametrize("operation", JOB_NAME_OPERATIONS)
def test_job_name_operations(operation):
    assert validate_job_name(operation, {"CompilationJobName": "job-1"}) == "job-1"
    bad = rejected(validate_job_name, operation, {"CompilationJobName": "job_1"})
    assert bad.field == "CompilationJobName"
    assert "null" in rejected(validate_job_name, operation, {}).message
    assert rejected(validate_job_name, operation, {"CompilationJobName": "a", "Force": True}).field == "Force"


def test_list_defaults_and_timestamps():
    assert validate_list_request({}).sort_by == "CreationTime"
    req = validate_list_request({
        "CreationTimeAfter": 1700000000.5, "LastModifiedTimeBefore": "2024-01-02T04:04:05+01:00",
        "CreationTimeBefore": "2024-01-02T03:04:05", "NextToken": "", "MaxResults": 100,
        "StatusEquals": "COMPLETED", "NameContains": "cnn-"})
    assert req.creation_time_after == datetime.fromtimestamp(1700000000.5, UTC)
    utc = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)  # a zone-less ISO time reads as UTC
    assert req.last_modified_time_before == req.creation_time_before == utc
    assert req.creation_time_before.tzinfo is UTC
    assert req.next_token is None and req.max_results == 100 and req.sort_order == "Ascending"
    assert (req.status_equals, req.name_contains) == ("COMPLETED", "cnn-")
    assert validate_list_request({}).max_results == 10


LIST_REJECTIONS = {
    "status": ({"StatusEquals": "Completed"}, "StatusEquals", "[INPROGRESS, COMPLETED, FAILED"),
    "sort by": ({"SortBy": "Date"}, "SortBy", "[Name, CreationTime, Status]"),
    "sort order": ({"SortOrder": "asc"}, "SortOrder", "[Ascending, Descending]"),
    "max results 101": ({"MaxResults": 101}, "MaxResults", "less than or equal to 100"),
    "max results 0": ({"MaxResults": 0}, "MaxResults", "greater than or equal to 1"),
    "max results string": ({"MaxResults": "10"}, "MaxResults", "must be an integer"),
    "name contains _": ({"NameContains": "cnn_"}, "NameContains", "pattern"),
    "name contains 64": ({"NameContains": "a" * 64}, "NameContains", "63"),
    "timestamp word": ({"CreationTimeAfter": "yesterday"}, "CreationTimeAfter", "timestamp"),
    "timestamp bool": ({"LastModifiedTimeAfter": True}, "LastModifiedTimeAfter", "timestamp"),
    "next token long": ({"NextToken": "t" * 8193}, "NextToken", "8192"),
    "unknown": ({"Limit": 5}, "Limit", "MaxResults"),
}


@pytest.mark.parametrize("params, field, words", LIST_REJECTIONS.values(), ids=LIST_REJECTIONS.keys())
def test_list_rejections(params, field, words):
    error = rejected(validate_list_request, params)
    assert (error.field, words in error.message) == (field, True), error


def test_tag_operations():
    added = validate_add_tags(
        {"ResourceArn": JOB_ARN, "Tags": [{"Key": "a", "Value": ""}, {"Key": "b b", "Value": "ü"}]})
    assert added.tags == (Tag("a", ""), Tag("b b", "ü")) and added.resource_arn == JOB_ARN
    listed = validate_list_tags({"ResourceArn": JOB_ARN})
    assert (listed.max_results, listed.next_token) == (50, None)
    assert validate_delete_tags({"ResourceArn": JOB_ARN, "TagKeys": ["a", "b", "a"]}).tag_keys == ("a", "b")


TAG_REJECTIONS = {
    "add: bad arn": (validate_add_tags, {"ResourceArn": "arn:aws:s3:::bucket", "Tags": [TAG]}, "ResourceArn",
                     "pattern"),
    "add: no tags": (validate_add_tags, {"ResourceArn": JOB_ARN}, "Tags", "null"),
    "add: 51 tags": (validate_add_tags,
                     {"ResourceArn": JOB_ARN, "Tags": [TAG | {"Key": str(i)} for i in range(51)]}, "Tags",
                     "less than or equal to 50"),
    "add: aws key": (validate_add_tags, {"ResourceArn": JOB_ARN, "Tags": [{"Key": "aws:x", "Value": "v"}]},
                     "Tags[0].Key", "reserved"),
    "list: max 49": (validate_list_tags, {"ResourceArn": JOB_ARN, "MaxResults": 49}, "MaxResults",
                     "greater than or equal to 50"),
    "list: no arn": (validate_list_tags, {}, "ResourceArn", "null"),
    "delete: no keys": (validate_delete_tags, {"ResourceArn": JOB_ARN, "TagKeys": []}, "TagKeys",
                        "greater than or equal to 1"),
    "delete: 51 keys": (validate_delete_tags, {"ResourceArn": JOB_ARN, "TagKeys": list(map(str, range(51)))},
                        "TagKeys", "less than or equal to 50"),
    "delete: long key": (validate_delete_tags, {"ResourceArn": JOB_ARN, "TagKeys": ["a", "k" * 129]},
                         "TagKeys[1]", "128"),
    "delete: keys as string": (validate_delete_tags, {"ResourceArn": JOB_ARN, "TagKeys": "a"}, "TagKeys",
                               "array"),
}


@pytest.mark.parametrize("call, params, field, words", TAG_REJECTIONS.values(), ids=TAG_REJECTIONS.keys())
def test_tag_rejections(call, params, field, words):
    error = rejected(call, params)
    assert (error.field, words in error.message) == (field, True), error


def test_job_name_guard_refuses_other_operations():
    with pytest.raises(ValueError):
        validate_job_name("ListTags", {"ResourceArn": JOB_ARN})


@pytest.mark.parametrize("operation", ["CreateTrainingJob", "DescribeCompilationJobs", ""])
def test_unknown_operation_is_its_own_error(operation):
    with pytest.raises(UnknownOperationError) as info:
        validate_input(operation, {})
    assert not isinstance(info.value, ValidationError) and info.value.operation == operation
    assert "CreateCompilationJob" in str(info.value)
    why = "does not serve" if operation == "CreateTrainingJob" else "is not a SageMaker operation"
    assert why in str(info.value)


# ---- botocore's Java patterns, translated -----------------------------------------------------------------

def pattern_of(shape: str) -> str:
    return shapes.service_model().shape_for(shape).metadata["pattern"]


PATTERN_CASES = [
    ("EntityName", "a", True), ("EntityName", "a-b--c9", True), ("EntityName", "a" * 63, True),
    ("EntityName", "a_b", False), ("EntityName", "-a", False), ("EntityName", "a-", False),
    ("EntityName", "a.b", False), ("EntityName", "job\n", False),
    ("RoleArn", ROLE, True), ("RoleArn", "arn:aws-us-gov:iam::123456789012:role/r", True),
    ("RoleArn", "arn:aws:iam::123456789012:role", False),
    ("RoleArn", "arn:aws:iam::١٢٣٤٥٦٧٨٩٠١٢:role/r", False),  # Java's \d is ASCII
    ("S3Uri", "s3://b/k", True), ("S3Uri", "https://host/b/k", True), ("S3Uri", "s3://b", True),
    ("S3Uri", "http://host/b/k", False), ("S3Uri", "s3:///k", False),
    ("FrameworkVersion", "1.15", True), ("FrameworkVersion", "2.x", True),
    ("FrameworkVersion", "v1.0", False), ("FrameworkVersion", "1.", False),
    ("ResourceArn", JOB_ARN, True),
    ("ResourceArn", "arn:aws:sagemaker:us-east-1:123:compilation-job/x", False),
    ("NameContains", "cnn-1", True), ("NameContains", "a b", False), ("NameContains", "", False),
    ("TagKey", "Projekt-Ä", True), ("TagKey", "名前", True), ("TagKey", "a b\u00a0c", True),
    ("TagKey", "٣²", True), ("TagKey", "a:b/c=d+e-f@g_h.i", True), ("TagKey", "a\tb", False),
    ("TagKey", "a#b", False), ("TagKey", "{x}", False), ("TagValue", "", True),
    ("KmsKeyId", "arn:aws:kms:us-east-1:123456789012:key/abc-1", True), ("KmsKeyId", "a b", False),
    ("NeoVpcSubnetId", "subnet-0a1b", True), ("NeoVpcSubnetId", "subnet_0", False),
    ("CompilerOptions", '{"mcpu": "x"}', True), ("CompilerOptions", "{\r}", False),
    ("DataInputConfig", '{"data":\n [1, 3]}', True),
]


@pytest.mark.parametrize("shape, value, matches", PATTERN_CASES)
def test_translated_patterns(shape, value, matches):
    compiled = shapes.python_pattern(pattern_of(shape))
    assert compiled is not None
    assert bool(compiled.fullmatch(value)) is matches


def test_every_pattern_of_the_served_operations_translates():
    model = shapes.service_model()
    seen: set[str] = set()

    def walk(shape):
        if shape.name in seen:
            return
        seen.add(shape.name)
        if "pattern" in shape.metadata:
            assert shapes.python_pattern(shape.metadata["pattern"]) is not None, shape.name
        for child in [*getattr(shape, "members", {}).values(), getattr(shape, "member", None),
                      getattr(shape, "key", None), getattr(shape, "value", None)]:
            if child is not None:
                walk(child)

    for operation in shapes.OPERATIONS:
        walk(model.operation_model(operation).input_shape)
    assert {"EntityName", "RoleArn", "S3Uri", "TagKey", "ResourceArn", "NameContains"} <= seen


@pytest.mark.parametrize("java, python_matches", [
    (r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]*", {"a\U0001F600\t": True, "a\n": False}),
    (r"arn:[\p{Alnum}\-]+:x", {"arn:aws-cn:x": True, "arn:aws_cn:x": False}),
    (r"\P{L}+", {"123 !": True, "1a": False}),
    (r"\d+", {"123": True, "١٢٣": False}),  # Java's \d is ASCII
])
def test_java_constructs(java, python_matches):
    compiled = shapes.python_pattern(java)
    assert compiled is not None
    assert {text: bool(compiled.fullmatch(text)) for text in python_matches} == python_matches


@pytest.mark.parametrize("java", [r"([\p{L}]*)${1,128}", r"[a-z&&[^c]]", r"\Qa.b\E", r"\p{InGreek}", r"\h"])
def test_untranslatable_patterns_are_skipped(java):
    assert shapes.python_pattern(java) is None

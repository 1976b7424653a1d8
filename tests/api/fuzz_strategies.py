"""Hypothesis strategies for hostile requests to every operation `kiln serve` answers (issue 12, item 3).

Shared by tests/api/test_fuzz.py (a bounded run in `make test`) and bench/fuzz.py (`make fuzz`, 10,000+).
A `Case` is one request as data; tests/api/fuzz_wire.py signs it, sends it and judges the answer.

SageMaker bodies start from a valid request of the operation and change one member that botocore's
service model names (to a value of the wrong type, a hostile value, or nothing), so the checks behind the
shape check are reached too; whole bodies are also replaced. S3 requests are built per operation from its
query parameters, headers and body, each drawn from hostile values. Most requests are signed with valid
credentials, so they reach the handlers; the rest are unsigned, badly signed, signed by another account, or
carry a forged signature claim (hostile times, scopes and header lists).
"""
from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from botocore.model import Shape
from hypothesis import assume
from hypothesis import strategies as st

from modelkiln.jobs.shapes import OPERATIONS, input_shape

Signing = Literal["sigv4", "presigned", "none", "wrong-secret", "unknown-key", "garbage", "other-account",
                  "forged"]
# Weighted by repetition: most requests must get past authentication to reach the handlers. "forged": the
# case carries a hand-made Authorization header or presigned query (hostile times, scopes, names).
SIGNINGS: tuple[Signing, ...] = ("sigv4",) * 12 + ("none", "wrong-secret", "unknown-key", "garbage",
                                                   "other-account", "presigned", "forged", "forged")
JSON_TYPE = "application/x-amz-json-1.1"
MAX_JSON_BODY = 1024 * 1024  # Services.max_json_body: one byte more must be refused, not read
URL_TEXT = 1_100  # characters of a huge path, query or header text (S3 keys end at 1024 bytes)
MAX_HEAD = 15_000  # bytes of request line and headers: h11, under uvicorn, reads at most 16 KiB of them


@dataclass(frozen=True)
class Target:
    """What the fuzzed server holds, so requests can name real things: the first account's bucket, an
    object in it, an open multipart upload and a (failed) compilation job."""

    account_id: str
    bucket: str
    key: str
    upload_id: str
    upload_key: str
    job_name: str
    region: str = "us-east-1"

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/kiln-fuzz"

    @property
    def job_arn(self) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:compilation-job/{self.job_name}"


@dataclass(frozen=True)
class Case:
    """One request: `path` and `query` are percent-encoded as sent. `field` is the SageMaker member a case
    changed; `strict` says the change broke the member's JSON type, so the error must name that member."""

    api: Literal["sagemaker", "s3"]
    operation: str
    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    signing: Signing = "sigv4"
    field: str | None = None
    strict: bool = False

    def summary(self, limit: int = 300) -> str:
        """The case in one line, long values cut, for a failure report."""
        headers = {name: _cut(value, 80) for name, value in self.headers}
        return (f"{self.api}:{self.operation} {self.method} {_cut(self.path, 120)}?{_cut(self.query, 160)} "
                f"signing={self.signing} field={self.field} headers={headers} body={self.body[:limit]!r}"
                f"{'...' if len(self.body) > limit else ''} ({len(self.body)} bytes)")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each as often as its weight (st.one_of drops repeated strategies)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


# ---- hostile values -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RawJson:
    """JSON text put into a body as is: what json.dumps cannot write (5000-digit integers, 1000+ levels)."""

    text: str


SPECIAL_TEXT = (
    "", " ", "\r\n", "a\r\nb", "\x00", "\x00\x01\x1f\x7f", "\t", "../../etc/passwd", "%00", "%zz", "\\",
    "\ud800", "\udfff", "a\ud800b", "\udbff\udfff", "\ufeff", "\u202e", "\U0001f525", "\u0130", "ß", "²",
    "٣", "𝟗", "½", "NaN", "Infinity", "-0", "null", "true", "[]", "{}", "'", '"', "<", "&amp;", "]]>",
    "s3://", "s3://b", "s3://bucket/../x", "arn:aws:sagemaker:us-east-1:000000000000:compilation-job/x",
    "bytes=0-", "*", "?", "#", "%", "+", " leading", "trailing ", "a" * 64, "A" * 129,
)


def huge_text(longest: int, chars: str) -> st.SearchStrategy[str]:
    """Strings past every length bound, up to `longest` characters, cheap to generate."""
    return st.builds(lambda n, c: c * n, st.integers(1_000, longest), st.sampled_from(chars))


def text(longest: int = 300_000, chars: str = "xé\U0001f525\x00/") -> st.SearchStrategy[str]:
    """Any text a client could send: Unicode, lone surrogates, controls, up to `longest` characters."""
    return st.one_of(
        st.sampled_from(SPECIAL_TEXT),
        st.text(max_size=40),
        st.text(st.characters(codec=None, categories=["Cs", "Cc", "Zl", "Zp", "Co", "Cn"]), max_size=12),
        st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=40),
        huge_text(longest, chars),
    )


def url_text() -> st.SearchStrategy[str]:
    """Text for a path, query or header: past S3's 1024-byte key limit, yet short enough that the request
    head stays under h11's 16 KiB (uvicorn refuses a longer head before the app sees it)."""
    return text(URL_TEXT, "xé/")


def deep_json() -> st.SearchStrategy[RawJson]:
    """Arrays or objects nested 1000 to 6000 levels (past any recursive parser's limit)."""
    def nest(depth: int, kind: str) -> RawJson:
        if kind == "array":
            return RawJson("[" * depth + "]" * depth)
        return RawJson('{"a":' * depth + "1" + "}" * depth)
    return st.builds(nest, st.integers(990, 6000), st.sampled_from(["array", "object"]))


def huge_numbers() -> st.SearchStrategy[RawJson]:
    """Integers of 4300+ digits (past int()'s limit), and numbers no double holds."""
    digits = st.builds(lambda n, sign: RawJson(sign + "9" * n), st.integers(4_000, 6_000), st.sampled_from(["", "-"]))
    return st.one_of(digits, st.sampled_from([RawJson("1e99999"), RawJson("-1e99999"), RawJson("1" + "0" * 5000 + ".5"),
                                              RawJson("NaN"), RawJson("Infinity"), RawJson("-0")]))


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(2**31 - 2, 2**70), st.integers(-(2**70), -(2**31) + 1),
        st.floats(), text(),
    )


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, including what the JSON parser itself must refuse (deep, huge, malformed)."""
    nested = st.recursive(scalars(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8) | st.sampled_from(["\ud800", ""]), inner, max_size=4), max_leaves=10)
    return weighted((8, nested), (1, deep_json()), (1, huge_numbers()))


def literal_texts() -> st.SearchStrategy[str]:
    """DataInputConfig / CompilerOptions: JSON-or-Python-literal text, parsed by modelkiln.literal."""
    def nested_literal(depth: int, opener: str) -> str:
        closer = {"[": "]", "(": ")", "{'a': ": "}"}[opener]
        return opener * depth + "1" + closer * depth
    return st.one_of(
        st.builds(nested_literal, st.integers(100, 20_000), st.sampled_from(["[", "(", "{'a': "])),
        st.builds(lambda n: '{"data": [' + "9" * n + "]}", st.integers(4_000, 6_000)),
        st.builds(lambda n: "{'data': [" + "9" * n + "]}", st.integers(4_000, 6_000)),
        st.sampled_from(["9**9**9", "[1e999]", "{'a': -1e309}", "{'data': [1, 3, 224, 224]}", "[[1, 3]]",
                         '{"data": [1, 3, 32, 32]}', "{'a': b'\\xff'}", "{1: 2}", "{'a': {1, 2}}", "()", "''",
                         "{'data': [1.5, -1, 0]}", "{'data': []}", "{'data': [" + "1, " * 3000 + "1]}",
                         "lambda: 0", "__import__('os')", '{"mcpu": "\\ud800"}', '{"kiln-backend": 1}',
                         '{"class_labels": 5}', '{"cuda-ver": "99"}', "{" * 3]),
        json_values().map(_dumps),
        text(),
    )


# Every kind of NextToken paging.py issues: ListCompilationJobs' sort orders, and ListTags'.
SORTS = tuple((by, order) for by in ("Name", "CreationTime", "Status") for order in ("Ascending", "Descending"))
TOKEN_KINDS = tuple(f"{by}/{order}" for by, order in SORTS) + ("tags",)


def forged_tokens(kinds: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """NextTokens a client made up: the right envelope (base64url JSON) around hostile values, and garbage."""
    def token(kind: str, value: Any, row_id: Any) -> str:
        return _b64(_dumps({"k": kind, "v": value, "i": row_id}))
    big = st.one_of(st.integers(2**63 - 2, 2**70), st.integers(-(2**70), -(2**63) + 1))
    values = weighted((3, text(2_000)), (2, big), (1, st.integers()), (1, st.floats()), (1, json_values()))
    ids = weighted((3, big), (1, st.integers()), (1, text(2_000)), (1, json_values()))
    return weighted(
        (6, st.builds(token, kinds, values, ids)),
        (1, st.builds(lambda depth: _b64("[" * depth + "]" * depth), st.integers(990, 3000))),  # fits in 8192
        (1, text()),
        (1, st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode())),
    )


def _b64(text_: str) -> str:
    return base64.urlsafe_b64encode(text_.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def _dumps(value: Any) -> str:
    """JSON text with RawJson pieces inserted as is; strings escape lone surrogates as \\udXXX."""
    if isinstance(value, RawJson):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    return json.dumps(value)


def encode_json(value: Any) -> bytes:
    return _dumps(value).encode("utf-8", "surrogatepass")


# ---- forged signatures --------------------------------------------------------------------------------------

TIMESTAMPS = ("20200101T000000Z", "99991231T235959Z", "00010101T000000Z", "20201301T000000Z", "20200230T250000Z",
              "2020-01-01T00:00:00Z", "")
HTTP_DATES = ("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 -1400",
              "Mon, 01 Jan 0001 00:00:00 +1400", "Mon, 01 Jan 10000 00:00:00 GMT", "Mon, 31 Feb 2020 00:00:00 GMT",
              "Tue, 15 Nov 1994 08:12:31 GMT", "Mon, 01 Jan 2020 00:00:00 +9999", "")


@st.composite
def forged_auth(draw: st.DrawFn, service: str, header_names: list[str]
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str | None]]]:
    """(headers, query pairs) of a hand-made SigV4 claim: an Authorization header (with X-Amz-Date or Date)
    or a presigned query, mostly well formed around one hostile part, so the time and scope checks are reached."""
    timestamp = draw(weighted((3, st.sampled_from(TIMESTAMPS)), (1, header_text())))
    scope = (
        draw(st.sampled_from(["AKIAFUZZUNKNOWNKEY00", "", "\xff", "a" * 200]) | header_text()),
        draw(weighted((4, st.just(timestamp[:8])), (1, header_text()))),
        draw(weighted((4, st.just("us-east-1")), (1, st.sampled_from(["", "-x", "123", "a" * 64])),
                      (1, header_text()))),
        draw(weighted((4, st.just(service)), (1, st.sampled_from(["s3", "sagemaker", "iam", ""])))),
        draw(weighted((4, st.just("aws4_request")), (1, header_text()))),
    )
    carrier = draw(st.sampled_from(["x-amz-date", "date", "query"]))
    names = sorted({"host", *header_names, *([carrier] if carrier != "query" else [])})
    signed = draw(weighted((4, st.just(";".join(names))), (1, st.sampled_from(["", ";", "Host", "host;host"])),
                           (1, header_text())))
    signature = draw(weighted((3, st.just("0" * 64)), (1, header_text())))
    if carrier == "query":
        expires = draw(weighted((3, st.sampled_from(["604800", "1", "0", "604801"])), (1, digits_text())))
        return [], [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", "/".join(scope)),
                    ("X-Amz-Date", timestamp), ("X-Amz-Expires", expires), ("X-Amz-SignedHeaders", signed),
                    ("X-Amz-Signature", signature)]
    algorithm = draw(weighted((4, st.just("AWS4-HMAC-SHA256")),
                              (1, st.sampled_from(["AWS", "AWS4-ECDSA-P256-SHA256"]))))
    authorization = f"{algorithm} Credential={'/'.join(scope)}, SignedHeaders={signed}, Signature={signature}"
    dates = weighted((3, st.sampled_from(HTTP_DATES)), (1, header_text()))
    when = timestamp if carrier == "x-amz-date" else draw(dates)
    return [("authorization", authorization), (carrier, when)], []


# ---- SageMaker ---------------------------------------------------------------------------------------------

Path = tuple[str | int, ...]


def base_request(operation: str, target: Target) -> dict[str, Any]:
    """A request of `operation` that passes validation; CreateCompilationJob's model does not exist, so no
    mutation of it queues a compile (every field is checked before the model's location)."""
    job = {"CompilationJobName": target.job_name}
    return {
        "CreateCompilationJob": {
            "CompilationJobName": "fuzz-new-job", "RoleArn": target.role_arn,
            "InputConfig": {"S3Uri": f"s3://{target.bucket}/missing/model.tar.gz", "Framework": "PYTORCH",
                            "DataInputConfig": '{"data": [1, 3, 32, 32]}', "FrameworkVersion": "2.0"},
            "OutputConfig": {"S3OutputLocation": f"s3://{target.bucket}/out/", "TargetDevice": "ml_c5",
                             "CompilerOptions": '{"kiln-backend": "onnxruntime"}'},
            "StoppingCondition": {"MaxRuntimeInSeconds": 600, "MaxPendingTimeInSeconds": 3600},
            "VpcConfig": {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]},
            "Tags": [{"Key": "team", "Value": "fuzz"}],
        },
        "DescribeCompilationJob": job,
        "ListCompilationJobs": {"NameContains": "fuzz", "MaxResults": 5, "SortBy": "Name", "SortOrder": "Descending",
                                "StatusEquals": "FAILED", "CreationTimeAfter": 0, "LastModifiedTimeBefore": 4e9},
        "StopCompilationJob": job,
        "DeleteCompilationJob": {"CompilationJobName": "fuzz-absent-job"},  # the fixture job stays
        "AddTags": {"ResourceArn": target.job_arn, "Tags": [{"Key": "fuzz", "Value": "1"}]},
        "ListTags": {"ResourceArn": target.job_arn, "MaxResults": 50},
        "DeleteTags": {"ResourceArn": target.job_arn, "TagKeys": ["absent"]},
    }[operation]


def member_paths(shape: Shape, prefix: Path = (), depth: int = 0) -> list[tuple[Path, Shape]]:
    """Every member path of an input shape (list items as index 0), read from botocore's model."""
    if depth > 6:
        return []
    out: list[tuple[Path, Shape]] = []
    if shape.type_name == "structure":
        for name, member in shape.members.items():  # type: ignore[attr-defined]
            out.append(((*prefix, name), member))
            out += member_paths(member, (*prefix, name), depth + 1)
    elif shape.type_name == "list":
        out.append(((*prefix, 0), shape.member))  # type: ignore[attr-defined]
        out += member_paths(shape.member, (*prefix, 0), depth + 1)  # type: ignore[attr-defined]
    return out


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "structure": lambda v: isinstance(v, dict), "map": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list), "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "timestamp": lambda v: isinstance(v, int | float | str) and not isinstance(v, bool),
}


def wrong_type(shape: Shape, value: Any) -> bool:
    """The value cannot be of the shape's JSON type (None reads as absent; RawJson fails to parse first)."""
    if value is None or isinstance(value, RawJson):
        return False
    return not _JSON_TYPES.get(shape.type_name, lambda v: True)(value)


def _leaf(path: Path) -> str:
    return next(str(p) for p in reversed(path) if isinstance(p, str))


def mutate(request: dict[str, Any], path: Path, value: Any, delete: bool) -> tuple[dict[str, Any], bool]:
    """A copy of request with the member at path set (or deleted); and whether its parent was there, so the
    shape check reaches the member before anything else can fail."""
    out = copy.deepcopy(request)
    node: Any = out
    present = True
    for depth, step in enumerate(path[:-1]):
        if isinstance(node, list):
            while len(node) <= int(step):
                node.append({})
                present = False
            node = node[int(step)]
        else:
            if step not in node or not isinstance(node[step], dict | list):
                node[step] = [] if isinstance(path[depth + 1], int) else {}
                present = False
            node = node[step]
    last = path[-1]
    if isinstance(node, list):
        if int(last) < len(node):
            node[int(last)] = value
        else:
            node.append(value)
    elif delete:
        node.pop(last, None)
    else:
        node[last] = value
    return out, present


# Members whose text another parser reads (a literal, a token): they get values aimed at it, and more often.
AIMED = ("DataInputConfig", "CompilerOptions", "NextToken")


def member_values(path: Path, request: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Hostile values for one member; NextToken mostly gets tokens forged for the request's own listing."""
    leaf = _leaf(path)
    if leaf in ("DataInputConfig", "CompilerOptions"):
        return weighted((3, literal_texts()), (1, json_values()))
    if leaf == "NextToken":
        return weighted((4, forged_tokens(token_kinds(request))), (1, json_values()))
    return json_values()


def token_kinds(request: dict[str, Any]) -> st.SearchStrategy[str]:
    """Mostly the kind of token the request's own listing issues, so a forged token gets past the kind check."""
    own = "tags" if "ResourceArn" in request else f"{request['SortBy']}/{request['SortOrder']}"
    return weighted((4, st.just(own)), (1, st.sampled_from(TOKEN_KINDS)), (1, text(2_000)))


@st.composite
def mutated_bodies(draw: st.DrawFn, operation: str, target: Target) -> tuple[bytes, str | None, bool]:
    """(body, the member changed, strict): a valid request with one member changed, deleted or added."""
    request = base_request(operation, target)
    if operation == "ListCompilationJobs":  # each sort order pages with tokens of its own kind
        request["SortBy"], request["SortOrder"] = draw(st.sampled_from(SORTS))
    paths = member_paths(input_shape(operation))
    path, shape = draw(st.sampled_from([p for p in paths for _ in range(4 if _leaf(p[0]) in AIMED else 1)]))
    how = draw(st.sampled_from(["value", "value", "value", "delete", "unknown-member", "as-is"]))
    if how == "as-is":  # the valid request itself, so the handlers' success paths run between the failures
        return encode_json(request), None, False
    if how == "unknown-member":
        name = draw(st.sampled_from(["Unknown", "compilationJobName", "__proto__", "\ud800", ""]) | st.text(max_size=8))
        parent = draw(st.sampled_from([(), *(p for p, s in paths if s.type_name == "structure")]))
        changed, _ = mutate(request, (*parent, name), draw(json_values()), delete=False)
        return encode_json(changed), None, False
    value = draw(member_values(path, request))
    changed, present = mutate(request, path, value, delete=how == "delete")
    strict = how == "value" and present and wrong_type(shape, value)
    return encode_json(changed), ".".join(map(str, path)), strict


@st.composite
def token_cases(draw: st.DrawFn, target: Target) -> Case:
    """ListCompilationJobs / ListTags, signed, with a NextToken forged for the listing (or not)."""
    operation = draw(st.sampled_from(["ListCompilationJobs", "ListTags"]))
    request = base_request(operation, target)
    if operation == "ListCompilationJobs":
        request["SortBy"], request["SortOrder"] = draw(st.sampled_from(SORTS))
    request["NextToken"] = draw(forged_tokens(token_kinds(request)))
    return Case("sagemaker", operation, "POST", "/", "", (("content-type", JSON_TYPE),
                                                          ("x-amz-target", f"SageMaker.{operation}")),
                encode_json(request), "sigv4", "NextToken")


def whole_bodies() -> st.SearchStrategy[bytes]:
    """Bodies that are not a request at all."""
    return st.one_of(
        st.binary(max_size=256),
        st.sampled_from([b"", b"null", b"[]", b"\"x\"", b"1", b"{", b"\xff\xfe{}", b"{\"a\": 1} trailing",
                         b'{"a": 1, "a": 2}', b"\xef\xbb\xbf{}", b"{}" + b" " * 100_000]),
        json_values().map(encode_json),
        st.builds(lambda n: b"{\"NextToken\": \"" + b"x" * n + b"\"}", st.just(MAX_JSON_BODY)),  # one byte too many
    )


def targets_header() -> st.SearchStrategy[tuple[str, str]]:
    """(operation label, X-Amz-Target): mostly served operations, some other and malformed ones."""
    served = st.sampled_from(OPERATIONS).map(lambda op: (op, f"SageMaker.{op}"))
    other = st.sampled_from(["SageMaker.CreateTrainingJob", "SageMaker.", "SageMaker", "sagemaker.ListTags",
                             "S3.ListBuckets", "", "SageMaker.ListTags.Extra", "SageMaker.\xff\xfe"])
    return weighted((8, served), (1, other.map(lambda t: ("other-target", t))),
                    (1, header_text().map(lambda t: ("other-target", t))))


@st.composite
def sagemaker_cases(draw: st.DrawFn, target: Target, signings: tuple[Signing, ...] = SIGNINGS) -> Case:
    operation, header = draw(targets_header())
    if operation in OPERATIONS and draw(st.integers(0, 9)) > 0:
        body, member, strict = draw(mutated_bodies(operation, target))
    else:
        body, member, strict = draw(whole_bodies()), None, False
    content_type = draw(st.sampled_from([JSON_TYPE] * 8 + ["application/json", "text/plain"]) | header_text())
    signing = draw(st.sampled_from(signings))
    headers, query = [("content-type", content_type), ("x-amz-target", header)], []
    if signing == "forged":
        auth_headers, query = draw(forged_auth("sagemaker", [n for n, _ in headers]))
        headers += auth_headers
    return Case("sagemaker", operation, "POST", "/", query_string(query), tuple(headers), body, signing, member,
                strict and signing == "sigv4" and len(body) <= MAX_JSON_BODY)


# ---- S3 ------------------------------------------------------------------------------------------------------

def header_text() -> st.SearchStrategy[str]:
    """Header values an HTTP parser lets through (Latin-1, no line breaks or NUL): the app must judge them."""
    latin1 = st.characters(codec="latin-1", exclude_characters="\r\n\x00\x0b\x0c")
    return st.one_of(
        st.text(latin1, max_size=40).map(str.strip),
        st.sampled_from(["", "0", "-1", "1" * 5000, "bytes=0-0", "\xff\xfe", "a,b", "=", ";", "%00", "²"]),
        st.integers(1, 4000).map(lambda n: "v" * n),
    )


def digits_text() -> st.SearchStrategy[str]:
    """What an integer query parameter might hold: numbers, past limits, and Unicode digits."""
    return st.one_of(
        st.integers(-5, 10_001).map(str),
        st.builds(lambda n: "9" * n, st.integers(20, 6000)),
        st.sampled_from(["", " 1", "1 ", "+1", "0x10", "1e3", "1.0", "²", "٣", "𝟗", "½", "00001", "-0",
                         "\u0661"]),
        url_text(),
    )


def range_values() -> st.SearchStrategy[str]:
    numbers = st.one_of(st.integers(0, 2000).map(str), st.just(""), st.builds(lambda n: "9" * n, st.integers(18, 5000)))
    return st.one_of(
        st.builds(lambda a, b: f"bytes={a}-{b}", numbers, numbers),
        st.sampled_from(["bytes=0-1,3-4", "bytes=-0", "bytes=", "bytes=-", "bytes=5-3", "items=0-1", "bytes =0-1",
                         "bytes=0-1 ", "Bytes=0-1", "bytes=\xb2-", "bytes=1-\xb9"]),
        header_text(),
    )


def query_string(pairs: list[tuple[str, str | None]]) -> str:
    """name=value pairs percent-encoded as botocore signs them (a None value is a bare flag: `uploads`)."""
    def enc(text_: str) -> str:
        return quote(text_.encode("utf-8", "surrogatepass"), safe="-_.~")
    return "&".join(enc(k) if v is None else f"{enc(k)}={enc(v)}" for k, v in pairs)


def object_path(bucket: str, key: str | None) -> str:
    raw = f"/{bucket}" + (f"/{key}" if key is not None else "")
    return quote(raw.encode("utf-8", "surrogatepass"), safe="/~")


def bucket_names(target: Target) -> st.SearchStrategy[str]:
    names = st.one_of(st.sampled_from(["no-such-bucket-fuzz", "ab", "A_b", "x" * 64, "-bad", "a..b", "192.168.0.1",
                                       "_kiln"]),
                      st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="/?#%"),
                              min_size=1, max_size=70),
                      url_text().filter(lambda s: s and "/" not in s))
    return weighted((3, st.just(target.bucket)), (1, names))


def keys(target: Target, writable: bool) -> st.SearchStrategy[str]:
    """Object keys; one that may be written or deleted never is the fixture object."""
    hostile = st.one_of(
        url_text().filter(bool),
        st.sampled_from(["a//b", "./x", "../x", "x/", "/", "a" * 1025, "é" * 600, "n" * 300, "d/" * 600,
                         "\x00", "nul\x00byte", "\ud800", "CON", "x" * 255 + "/y", ".", ".."]),
    )
    if writable:
        return hostile.filter(lambda k: k != target.key)
    return weighted((2, st.just(target.key)), (3, hostile))


def checksum_headers() -> st.SearchStrategy[list[tuple[str, str]]]:
    names = st.sampled_from(["content-md5", "x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-checksum-crc32c",
                             "x-amz-checksum-sha1", "x-amz-checksum-unknown", "x-amz-sdk-checksum-algorithm"])
    values = st.one_of(header_text(), st.binary(min_size=0, max_size=40).map(lambda b: base64.b64encode(b).decode()))
    return st.lists(st.tuples(names, values), max_size=2, unique_by=lambda p: p[0])


def meta_headers() -> st.SearchStrategy[list[tuple[str, str]]]:
    token = st.text(st.sampled_from("abcxyz019-_.!#$&'*+^`|~"), min_size=0, max_size=20)
    return st.lists(st.tuples(token.map(lambda t: "x-amz-meta-" + t), header_text()), max_size=3,
                    unique_by=lambda p: p[0])


def object_headers(target: Target) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Headers PutObject, CopyObject and CreateMultipartUpload read."""
    one = st.one_of(
        st.tuples(st.just("content-type"), header_text()),
        st.tuples(st.just("x-amz-copy-source"), st.one_of(header_text(), st.sampled_from(
            [f"/{target.bucket}/{target.key}", f"{target.bucket}/{target.key}?versionId=1", "%ff%fe/x",
             "%ED%A0%80/k", "b/", "/", "?"]))),
        st.tuples(st.just("x-amz-metadata-directive"), st.sampled_from(["COPY", "REPLACE", "replace", "MOVE", ""])),
        st.tuples(st.just("x-amz-server-side-encryption"), st.sampled_from(["AES256", "aws:kms", "aws:kms:dsse", ""])),
        st.tuples(st.just("x-amz-server-side-encryption-aws-kms-key-id"), header_text()),
        st.tuples(st.just("x-amz-checksum-algorithm"), st.sampled_from(["CRC32", "SHA256", "crc64nvme", ""])),
        st.tuples(st.just("x-amz-storage-class"), st.sampled_from(["STANDARD", "GLACIER", ""])),
        st.tuples(st.just("x-amz-tagging"), header_text()),
        st.tuples(st.just("expect"), st.just("100-continue")),
    )
    return st.lists(one, max_size=3, unique_by=lambda p: p[0])


def overrides() -> st.SearchStrategy[list[tuple[str, str | None]]]:
    """response-* query overrides (presigned GET links choose them) and other GetObject parameters."""
    names = st.sampled_from(["response-content-type", "response-content-disposition", "response-content-encoding",
                             "response-content-language", "response-cache-control", "response-expires",
                             "partNumber", "versionId", "x-id", "response-unknown"])
    values = st.one_of(url_text(), header_text(), st.sampled_from(["text/plain\r\nSet-Cookie: x=1", "a\nb", "\x85",
                                                                "attachment; filename=\"\u20ac.txt\""]))
    return st.lists(st.tuples(names, values), max_size=3)


def xml_bodies(target: Target) -> st.SearchStrategy[bytes]:
    """CompleteMultipartUpload / DeleteObjects / CreateBucketConfiguration bodies, well formed or not; a
    DeleteObjects body never names the fixture object."""
    numbers = digits_text()

    def complete(parts: list[tuple[str, str]]) -> bytes:
        inner = "".join(f"<Part><PartNumber>{_xml(n)}</PartNumber><ETag>{_xml(e)}</ETag></Part>" for n, e in parts)
        return f"<CompleteMultipartUpload>{inner}</CompleteMultipartUpload>".encode("utf-8", "surrogatepass")

    def delete(names: list[str], quiet: str) -> bytes:
        inner = "".join(f"<Object><Key>{_xml(k)}</Key></Object>" for k in names)
        return f"<Delete><Quiet>{_xml(quiet)}</Quiet>{inner}</Delete>".encode("utf-8", "surrogatepass")

    def deep(depth: int) -> bytes:
        return b"<CompleteMultipartUpload>" + b"<a>" * depth + b"</a>" * depth + b"</CompleteMultipartUpload>"

    return st.one_of(
        st.builds(complete, st.lists(st.tuples(numbers, header_text()), max_size=4)),
        st.builds(delete, st.lists(text().filter(lambda k: k != target.key), max_size=4),
                  st.sampled_from(["true", "x", ""])),
        st.builds(deep, st.integers(1000, 100_000)),
        st.sampled_from([
            b"", b"<", b"not xml", b"\xff\xfe<a/>", b"<?xml version='1.0' encoding='latin-1'?><Delete/>",
            b'<!DOCTYPE a [<!ENTITY b "c">]><Delete>&b;</Delete>', b"<Delete><Object><Key>a</Key>"
            b"<VersionId>3</VersionId></Object></Delete>", b"<CreateBucketConfiguration><LocationConstraint>"
            b"eu-west-1</LocationConstraint></CreateBucketConfiguration>", b"<x:Delete xmlns:x='urn:x'/>",
            b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
        ]),
        st.binary(max_size=128),
    )


def _xml(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;")


def chunked_bodies() -> st.SearchStrategy[tuple[list[tuple[str, str]], bytes]]:
    """(headers, body) of aws-chunked uploads with broken framing, sizes and trailers."""
    size_lines = st.one_of(st.sampled_from([b"5", b"ffffffffffffffff", b"0", b"-1", b"zz", b"5;chunk-signature=" +
                                            b"0" * 64, b"", b"1" * 5000]), st.binary(max_size=20))
    mode = st.sampled_from(["STREAMING-UNSIGNED-PAYLOAD-TRAILER", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"])
    trailer = st.sampled_from(["x-amz-checksum-crc32", "x-amz-checksum-crc32c", "x-amz-checksum-crc32,x-amz-checksum-"
                               "crc32", "content-md5", ""])

    def build(m: str, t: str, decoded: str, line: bytes, data: bytes, tail: bytes
              ) -> tuple[list[tuple[str, str]], bytes]:
        headers = [("x-amz-content-sha256", m), ("content-encoding", "aws-chunked"),
                   ("x-amz-decoded-content-length", decoded)]
        if t:
            headers.append(("x-amz-trailer", t))
        return headers, line + b"\r\n" + data + b"\r\n" + tail

    tails = st.sampled_from([b"0\r\n\r\n", b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n", b"", b"0\r\n:\r\n\r\n",
                             b"0\r\nx-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n"])
    return st.builds(build, mode, trailer, digits_text().map(lambda s: s.encode("latin-1", "replace").decode("latin-1"))
                     .filter(lambda s: "\r" not in s and "\n" not in s and "\x00" not in s), size_lines,
                     st.binary(max_size=64), tails)


def payload_hashes() -> st.SearchStrategy[str | None]:
    """x-amz-content-sha256: None lets the signer hash the body; the rest claim something else."""
    claims = st.sampled_from(["UNSIGNED-PAYLOAD", "0" * 64, "STREAMING-X", "abc",
                              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"])
    return weighted((4, st.none()), (1, claims))


@dataclass
class _S3Request:
    """An S3 request being built by a strategy."""

    operation: str
    method: str
    bucket: str | None = None
    key: str | None = None
    query: list[tuple[str, str | None]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@st.composite
def s3_requests(draw: st.DrawFn, target: Target) -> _S3Request:
    """One request of one S3 operation Kiln serves (or a neighbour it does not), with hostile inputs."""
    operation = draw(st.sampled_from(S3_OPERATIONS))
    read_key, write_key = keys(target, writable=False), keys(target, writable=True)
    r = _S3Request(operation, "GET")
    if operation == "ListBuckets":
        r.query = draw(st.lists(st.tuples(url_text(), url_text() | st.none()), max_size=2))
    elif operation in ("CreateBucket", "HeadBucket", "DeleteBucket", "GetBucketLocation"):
        r.method = {"CreateBucket": "PUT", "HeadBucket": "HEAD", "DeleteBucket": "DELETE"}.get(operation, "GET")
        r.bucket = draw(bucket_names(target))
        r.query = [("location", None)] if operation == "GetBucketLocation" else []
        r.body = draw(xml_bodies(target)) if operation == "CreateBucket" and draw(st.booleans()) else b""
    elif operation == "ListObjects":
        r.bucket = draw(bucket_names(target))
        names = st.sampled_from(["list-type", "encoding-type", "max-keys", "prefix", "delimiter", "continuation-token",
                                 "start-after", "marker", "fetch-owner", "max-keys"])
        r.query = draw(st.lists(st.tuples(names, st.one_of(digits_text(), url_text(), st.sampled_from(["2", "url"]))),
                                max_size=4))
    elif operation == "DeleteObjects":
        r.method, r.bucket, r.query = "POST", draw(bucket_names(target)), [("delete", None)]
        r.body = draw(xml_bodies(target))
    elif operation in ("PutObject", "CopyObject"):
        r.method, r.bucket, r.key = "PUT", draw(bucket_names(target)), draw(write_key)
        r.headers = draw(object_headers(target)) + draw(meta_headers()) + draw(checksum_headers())
        if operation == "CopyObject":
            source = st.one_of(st.just(f"{target.bucket}/{target.key}"), header_text(), url_text().map(
                lambda t: quote(t.encode("utf-8", "surrogatepass"))))
            r.headers = [(n, v) for n, v in r.headers if n != "x-amz-copy-source"]
            r.headers.append(("x-amz-copy-source", draw(source)))
        elif draw(st.integers(0, 4)) == 0:
            chunk_headers, r.body = draw(chunked_bodies())
            r.headers += chunk_headers
        else:
            r.body = draw(st.one_of(st.binary(max_size=512), st.builds(lambda n: b"\0" * n, st.integers(0, 200_000))))
    elif operation in ("GetObject", "HeadObject"):
        r.method = "GET" if operation == "GetObject" else "HEAD"
        r.bucket, r.key = draw(bucket_names(target)), draw(read_key)
        r.query = draw(overrides())
        r.headers = draw(st.lists(st.one_of(st.tuples(st.just("range"), range_values()),
                                            st.tuples(st.just("x-amz-checksum-mode"), st.sampled_from(
                                                ["ENABLED", "enabled", "", "DISABLED"])),
                                            st.tuples(st.sampled_from(["if-match", "if-none-match",
                                                                       "if-modified-since"]), header_text())),
                                  max_size=2, unique_by=lambda p: p[0]))
    elif operation == "DeleteObject":
        r.method, r.bucket, r.key = "DELETE", draw(bucket_names(target)), draw(write_key)
    else:  # multipart
        r.bucket = draw(bucket_names(target))
        upload = weighted((3, st.just(target.upload_id)), (1, url_text()), (1, st.just("")))
        on_upload = st.sampled_from([target.upload_key] * 3) | write_key
        if operation == "CreateMultipartUpload":
            r.method, r.key, r.query = "POST", draw(write_key), [("uploads", None)]
            r.headers = draw(object_headers(target)) + draw(meta_headers())
        elif operation == "UploadPart":
            r.method, r.key = "PUT", draw(on_upload)
            number = weighted((1, st.integers(1, 10_000).map(str)), (1, digits_text()))
            r.query = [("partNumber", draw(number)), ("uploadId", draw(upload))]
            r.headers = draw(checksum_headers())
            r.body = draw(st.binary(max_size=256))
        elif operation == "ListParts":
            r.key = draw(on_upload)
            r.query = [("uploadId", draw(upload))] + draw(st.lists(st.tuples(
                st.sampled_from(["part-number-marker", "max-parts"]), digits_text()), max_size=2))
        elif operation == "CompleteMultipartUpload":
            r.method, r.key, r.query = "POST", draw(write_key), [("uploadId", draw(upload))]
            r.body = draw(xml_bodies(target))
        elif operation == "AbortMultipartUpload":
            r.method, r.key, r.query = "DELETE", draw(write_key), [("uploadId", draw(upload))]
        else:  # a subresource or method Kiln does not serve
            r.method = draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS"]))
            r.key = draw(st.none() | read_key)
            r.query = draw(st.lists(st.tuples(st.sampled_from(["acl", "tagging", "versions", "uploads", "uploadId",
                                                               "partNumber", "delete", "select", "torrent"]),
                                              st.none() | url_text()), min_size=0, max_size=3))
            r.body = draw(st.binary(max_size=64))
    return r


S3_OPERATIONS = ("ListBuckets", "CreateBucket", "HeadBucket", "DeleteBucket", "GetBucketLocation", "ListObjects",
                 "DeleteObjects", "PutObject", "CopyObject", "GetObject", "HeadObject", "DeleteObject",
                 "CreateMultipartUpload", "UploadPart", "ListParts", "CompleteMultipartUpload",
                 "AbortMultipartUpload", "Unserved")


@st.composite
def s3_cases(draw: st.DrawFn, target: Target, signings: tuple[Signing, ...] = SIGNINGS) -> Case:
    r = draw(s3_requests(target))
    headers = list(r.headers)
    sha = draw(payload_hashes())
    if sha is not None and not any(n == "x-amz-content-sha256" for n, _ in headers):
        headers.append(("x-amz-content-sha256", sha))
    path = "/" if r.bucket is None else object_path(r.bucket, r.key)
    signing = draw(st.sampled_from(signings))
    if signing == "forged":
        auth_headers, auth_query = draw(forged_auth("s3", [n for n, _ in headers]))
        headers, r.query = headers + auth_headers, r.query + auth_query
    case = Case("s3", r.operation, r.method, path, query_string(r.query), tuple(headers), r.body, signing)
    assume(head_size(case) <= MAX_HEAD)
    return case


def head_size(case: Case) -> int:
    """Bytes of the request line and the case's headers (signing adds under 1 KiB)."""
    return len(case.path) + len(case.query) + sum(len(n) + len(v) + 4 for n, v in case.headers) + 16


def forged_cases(target: Target) -> st.SearchStrategy[Case]:
    """Requests of either API carrying a hand-made signature claim."""
    return st.one_of(sagemaker_cases(target, ("forged",)), s3_cases(target, ("forged",)))


def any_cases(target: Target) -> st.SearchStrategy[Case]:
    """Everything: the mix `make fuzz` sends."""
    return weighted((4, sagemaker_cases(target)), (1, token_cases(target)), (1, forged_cases(target)),
                    (5, s3_cases(target)))

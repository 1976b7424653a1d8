"""Sign, send and judge the cases of fuzz_strategies.py against a running `kiln serve`.

Each case goes out on its own socket, byte for byte as built (botocore would refuse to send most of them),
signed with botocore's own SigV4 signers. The judgement is the property of issue 12, item 3: an answer always
comes back, it is never a 5xx (S3's deliberate 501 NotImplemented for a feature Kiln does not serve aside),
and every 4xx says what went wrong in its protocol's error shape.
"""
from __future__ import annotations

import http.client
import json
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.api.fuzz_strategies import Case, Target
from tests.api.kiln_server import Account, KilnServer

GARBAGE_AUTHORIZATION = "AWS4-HMAC-SHA256 Credential=AKIA/2020/us-east-1/s3, SignedHeaders=host;;, Signature=zz"
TIMEOUT_S = 60


@dataclass(frozen=True)
class Wire:
    """Where to send cases, as whom, and what the server holds."""

    host: str
    port: int
    first: Account
    other: Account
    target: Target


@dataclass(frozen=True)
class Outcome:
    """The answer to one case; status None when the connection ended without one (`error` says how)."""

    status: int | None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""


def prepare(server: KilnServer, first: Account, other: Account) -> Wire:
    """Give the first account a bucket, an object, an open multipart upload and a failed job to aim at."""
    s3 = server.client("s3", first)
    bucket, key, upload_key = "fuzz-bucket", "obj", "fuzz-upload"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(range(256)) * 4, Metadata={"origin": "fuzz"})
    s3.put_object(Bucket=bucket, Key="fixture/broken.tar.gz", Body=b"\x1f\x8b\x08 not gzip")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=upload_key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=upload_key, UploadId=upload_id, PartNumber=1, Body=b"part one")
    target = Target(first.account_id, bucket, key, upload_id, upload_key, "fuzz-job")
    server.client("sagemaker", first).create_compilation_job(
        CompilationJobName=target.job_name, RoleArn=target.role_arn,
        InputConfig={"S3Uri": f"s3://{bucket}/fixture/broken.tar.gz", "Framework": "PYTORCH",
                     "DataInputConfig": '{"data": [1, 3, 8, 8]}'},
        OutputConfig={"S3OutputLocation": f"s3://{bucket}/out/", "TargetDevice": "ml_c5"},
        StoppingCondition={"MaxRuntimeInSeconds": 60})
    return Wire("127.0.0.1", server.port, first, other, target)


# ---- signing ---------------------------------------------------------------------------------------------

def _credentials(wire: Wire, case: Case) -> Credentials:
    account = wire.other if case.signing == "other-account" else wire.first
    secret = "x" * 40 if case.signing == "wrong-secret" else account.secret_access_key
    key_id = "AKIAFUZZUNKNOWNKEY00" if case.signing == "unknown-key" else account.access_key_id
    return Credentials(key_id, secret)


def signed(wire: Wire, case: Case) -> tuple[str, list[tuple[str, str]]]:
    """(request target: path and query, header fields) as the case's signing mode makes them."""
    host = f"{wire.host}:{wire.port}"
    target = case.path + (f"?{case.query}" if case.query else "")
    headers = [("host", host), *case.headers]
    if case.signing in ("none", "forged"):  # a forged claim is in the case's own headers or query
        return target, headers
    if case.signing == "garbage":
        return target, [*headers, ("authorization", GARBAGE_AUTHORIZATION), ("x-amz-date", "20200101T000000Z")]
    service = "s3" if case.api == "s3" else "sagemaker"
    # A presigned URL signs no body (botocore would move a JSON body into the query): the body is sent after
    request = AWSRequest(case.method, f"http://{host}{target}", headers=dict(case.headers),
                         data=b"" if case.signing == "presigned" else case.body)
    credentials, region = _credentials(wire, case), wire.target.region
    if case.signing == "presigned":
        signer = (S3SigV4QueryAuth if service == "s3" else SigV4QueryAuth)(credentials, service, region, expires=300)
    else:
        signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(credentials, service, region)
    signer.add_auth(request)
    path, _, query = request.url.partition("://")[2].partition("/")[2].partition("?")
    return "/" + path + (f"?{query}" if query else ""), [("host", host), *request.headers.items()]


# ---- sending ---------------------------------------------------------------------------------------------

def send(wire: Wire, case: Case, timeout_s: float = TIMEOUT_S) -> Outcome:
    """Send the case on a new connection and read the whole answer."""
    target, headers = signed(wire, case)
    if case.body or case.method in ("PUT", "POST"):
        headers.append(("content-length", str(len(case.body))))
    head = f"{case.method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    with socket.create_connection((wire.host, wire.port), timeout=timeout_s) as sock:
        try:
            sock.sendall(head.encode("latin-1") + case.body)
        except OSError:
            pass  # the server may answer and close before taking all of a body it refused: read its answer
        return _read(sock, case.method)


def _read(sock: socket.socket, method: str) -> Outcome:
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
        body = response.read()
    except (http.client.HTTPException, OSError) as exc:  # RemoteDisconnected, IncompleteRead, reset, timeout
        return Outcome(None, error=f"{type(exc).__name__}: {exc}")
    return Outcome(response.status, body, {k.lower(): v for k, v in response.getheaders()})


# ---- judging ---------------------------------------------------------------------------------------------

def problems(case: Case, outcome: Outcome) -> list[str]:
    """What is wrong with the answer to a case; empty when the property holds."""
    if outcome.status is None:
        return [f"the connection ended without an answer ({outcome.error})"]
    if outcome.status >= 500 and not deliberate_501(case, outcome):
        return [f"HTTP {outcome.status}: {outcome.body[:400]!r}"]
    if 400 <= outcome.status < 500 and case.method != "HEAD":  # an answer to HEAD has no body, in either API
        return _json_error_problems(case, outcome) if speaks_json(case) else _s3_error_problems(case, outcome)
    return []


def speaks_json(case: Case) -> bool:
    """SageMaker calls, and Kiln's own routes under /_kiln/ (no bucket name starts with '_'), answer in JSON."""
    return case.api == "sagemaker" or case.path.startswith("/_kiln/")


def deliberate_501(case: Case, outcome: Outcome) -> bool:
    """S3's own answer to a feature it does not implement (botocore does not retry it); HEAD has no body."""
    return (case.api == "s3" and outcome.status == 501
            and (case.method == "HEAD" or s3_code(outcome) == "NotImplemented"))


def s3_code(outcome: Outcome) -> str | None:
    try:
        root = ET.fromstring(outcome.body)
    except ET.ParseError:
        return None
    return root.findtext("Code") if root.tag == "Error" else None


def _s3_error_problems(case: Case, outcome: Outcome) -> list[str]:
    try:
        root = ET.fromstring(outcome.body)
    except ET.ParseError:
        return [f"HTTP {outcome.status} without an S3 XML error body: {outcome.body[:300]!r}"]
    if root.tag != "Error" or not root.findtext("Code") or root.findtext("Message") is None:
        return [f"HTTP {outcome.status} error body lacks <Code>/<Message>: {outcome.body[:300]!r}"]
    return []


def _json_error_problems(case: Case, outcome: Outcome) -> list[str]:
    try:
        error = json.loads(outcome.body)
    except ValueError:
        return [f"HTTP {outcome.status} without a JSON error body: {outcome.body[:300]!r}"]
    code, message = (error.get("__type"), error.get("message")) if isinstance(error, dict) else (None, None)
    if not isinstance(code, str) or not code or not isinstance(message, str) or not message:
        return [f"HTTP {outcome.status} error lacks __type/message: {outcome.body[:300]!r}"]
    leaf = field_leaf(case.field)
    if case.strict and leaf and (code != "ValidationException" or leaf not in message):
        return [f"a wrong-typed {case.field} got {code}: {message[:300]!r}, which does not name {leaf}"]
    return []


def field_leaf(path: str | None) -> str | None:
    """The member name a dotted path ends with ("Tags.0.Key" -> "Key")."""
    names = [part for part in (path or "").split(".") if part and not part.isdigit()]
    return names[-1] if names else None

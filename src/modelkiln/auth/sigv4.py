"""Verify AWS Signature Version 4 by recomputing it with botocore's own signer.

We parse what the client claims (`claim.py`), put the received request back into the shape botocore signed
(path and query as the client encoded them, exactly the signed header fields, the payload hash), and let
botocore's SigV4Auth / S3SigV4Auth build the canonical request, the string to sign and the signature. So the
server canonicalizes the way the client library does, by construction. Bodies that are streamed (hex hash
checked as read, aws-chunked) are checked by `modelkiln.auth.payload` with the `Verified` this returns.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, unquote_to_bytes

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import ReadOnlyCredentials

from modelkiln.auth.accounts import Credentials
from modelkiln.auth.claim import SIGV4_TIMESTAMP, Claim, parse_claim
from modelkiln.auth.errors import AuthError
from modelkiln.auth.request import HttpRequest

MAX_SKEW = timedelta(minutes=15)
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER})
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_UNUSED_HOST = "http://kiln.invalid"  # botocore wants a URL; the host it signs comes from the Host field

Lookup = Callable[[str], Credentials | None]


@dataclass(frozen=True)
class Principal:
    """Who signed a request, and for which region and service."""

    account_id: str
    access_key_id: str
    region: str
    service: str


@dataclass(frozen=True)
class ChunkSigning:
    """What aws-chunked chunk and trailer signatures chain from: the seed signature and the same key."""

    timestamp: str
    scope: str
    seed_signature: str
    sign: Callable[[str], str] = field(repr=False, compare=False)  # string to sign -> hex signature


@dataclass(frozen=True)
class Verified:
    """A request whose signature checked out; `payload_hash` is what it signed for the body."""

    principal: Principal
    payload_hash: str
    chunk_signing: ChunkSigning


class _SignedFieldsOnly:
    """Sign exactly the header fields the client listed in SignedHeaders, with the values received."""

    def __init__(self, secret: str, service: str, region: str, fields: HTTPHeaders) -> None:
        super().__init__(ReadOnlyCredentials("", secret, None), service, region)  # type: ignore[call-arg]
        self._fields = fields

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._fields


class _Signer(_SignedFieldsOnly, SigV4Auth):
    """SigV4 as botocore signs every service but S3 (path normalized and encoded once more)."""


class _S3Signer(_SignedFieldsOnly, S3SigV4Auth):
    """SigV4 as botocore signs S3 (path used as sent)."""


def authenticate(
    request: HttpRequest,
    lookup: Lookup,
    *,
    services: Collection[str] = ("sagemaker", "s3"),
    now: datetime | None = None,
    max_skew: timedelta = MAX_SKEW,
) -> Verified:
    """Check a request's SigV4 signature (Authorization header or presigned query); raise AuthError if bad.

    When `request.body` is given and a hex x-amz-content-sha256 was signed, the body is checked against it too.
    `now` (an aware datetime) replaces the server clock, for tests.
    """
    claim = parse_claim(request, services)
    _check_time(claim, (now or datetime.now(timezone.utc)).astimezone(timezone.utc), max_skew)
    credentials = lookup(claim.access_key_id)
    if credentials is None:
        raise AuthError("unknown_key", f"The access key id {claim.access_key_id} does not exist.")
    payload_hash = _payload_hash(request, claim)
    signer = (_S3Signer if claim.service == "s3" else _Signer)(
        credentials.secret_access_key, claim.service, claim.region, _signed_fields(request, claim)
    )
    botocore_request = _as_botocore_request(request, claim, payload_hash)
    canonical = signer.canonical_request(botocore_request)
    string_to_sign = signer.string_to_sign(botocore_request, canonical)
    expected = signer.signature(string_to_sign, botocore_request)
    if not hmac.compare_digest(expected.encode(), claim.signature.encode()):
        raise AuthError(
            "bad_signature",
            "The request signature we calculated does not match the signature you provided. "
            "Check your secret access key and signing method.",
            canonical_request=canonical,
            string_to_sign=string_to_sign,
        )
    _check_body(request, payload_hash)
    principal = Principal(credentials.account_id, claim.access_key_id, claim.region, claim.service)
    sign = functools.partial(signer.signature, request=botocore_request)
    scope = f"{claim.date}/{claim.region}/{claim.service}/aws4_request"
    return Verified(principal, payload_hash, ChunkSigning(claim.timestamp, scope, claim.signature, sign))


def _check_time(claim: Claim, now: datetime, max_skew: timedelta) -> None:
    signed_at = datetime.strptime(claim.timestamp, SIGV4_TIMESTAMP).replace(tzinfo=timezone.utc)
    server_time = now.strftime(SIGV4_TIMESTAMP)
    if claim.expires is not None:
        if now - signed_at > timedelta(seconds=claim.expires):  # not signed_at + ...: past year 9999 that overflows
            raise AuthError("expired", f"Request has expired: signed at {claim.timestamp} for {claim.expires} "
                            f"seconds, server time is {server_time}.")
        if signed_at - now > max_skew:
            raise AuthError("skew", f"Request is not valid yet: signed at {claim.timestamp}, "
                            f"server time is {server_time}.")
    elif abs(now - signed_at) > max_skew:
        minutes = int(max_skew.total_seconds() // 60)
        raise AuthError("skew", f"Signature expired: the request time {claim.timestamp} is more than {minutes} "
                        f"minutes from the server time {server_time}. Check your clock.")


def _payload_hash(request: HttpRequest, claim: Claim) -> str:
    declared = request.headers.get_all("x-amz-content-sha256")
    if len(declared) > 1:
        raise AuthError("malformed", "x-amz-content-sha256 appears more than once.")
    value = declared[0].strip() if declared else None
    if claim.service != "s3" and (claim.expires is not None or value == UNSIGNED_PAYLOAD or
                                  (value or "").startswith("STREAMING-")):
        # Only S3 may leave its body unsigned: a SageMaker body is the whole request (the job, its model and
        # output locations), so a signature that does not cover it would let the body be swapped.
        how = "a presigned URL" if claim.expires is not None else f"x-amz-content-sha256 {value[:40]!r}"
        raise AuthError("malformed", f"{claim.service} requests must sign their body; {how} leaves it unsigned "
                        "(only S3 takes unsigned payloads). Sign the request with its body's SHA-256, as "
                        "botocore does by default.")
    if claim.expires is not None:  # a presigned URL cannot know the body: S3 signs this constant
        if value in STREAMING_MODES:
            raise AuthError("malformed", "A presigned URL cannot carry an aws-chunked body.")
        return UNSIGNED_PAYLOAD
    if value is None:  # awsJson clients send no hash: the server hashes the body (REFERENCE.md section 1)
        if request.body is None:
            raise AuthError("malformed", "x-amz-content-sha256 is required when the body is streamed.")
        return hashlib.sha256(request.body).hexdigest()
    if value == UNSIGNED_PAYLOAD or value in STREAMING_MODES or _HEX_SHA256.fullmatch(value):
        return value
    if value.startswith("STREAMING-"):
        raise AuthError("unsupported", f"x-amz-content-sha256 {value[:64]!r} is not supported (SigV4a?).")
    raise AuthError("malformed", "x-amz-content-sha256 must be a hex SHA-256, UNSIGNED-PAYLOAD or a "
                    "STREAMING-* mode.")


def _check_body(request: HttpRequest, payload_hash: str) -> None:
    """A body held in memory must be the one whose hex x-amz-content-sha256 was signed."""
    declared = "x-amz-content-sha256" in request.headers  # if not, payload_hash was computed from this body
    if request.body is None or not declared or not _HEX_SHA256.fullmatch(payload_hash):
        return  # streamed (checked by payload.py as read), UNSIGNED-PAYLOAD, or aws-chunked
    if not hmac.compare_digest(hashlib.sha256(request.body).hexdigest(), payload_hash.lower()):
        raise AuthError("bad_digest", "The body does not match the x-amz-content-sha256 it was signed with.")


def _signed_fields(request: HttpRequest, claim: Claim) -> HTTPHeaders:
    fields = HTTPHeaders()
    for name in claim.signed_headers:
        values = request.headers.get_all(name)
        if not values:
            raise AuthError("bad_signature", f"The signed header {name!r} is missing from the request.")
        for value in values:
            fields[name] = value
    return fields


def _as_botocore_request(request: HttpRequest, claim: Claim, payload_hash: str) -> AWSRequest:
    path = _s3_path(request.path) if claim.service == "s3" else request.path
    query = _canonical_query(claim.query_pairs)
    url = _UNUSED_HOST + path + ("?" + query if query else "")
    # With this field set, botocore signs it as the payload hash instead of hashing a body itself.
    botocore_request = AWSRequest(method=request.method, url=url, headers={"X-Amz-Content-SHA256": payload_hash})
    botocore_request.context["timestamp"] = claim.timestamp
    return botocore_request


def _s3_path(path: str) -> str:
    """Each segment decoded and encoded again as AWS specifies: botocore's own paths come out unchanged."""
    return "/".join(quote(unquote_to_bytes(segment), safe="~") for segment in path.split("/"))


def _canonical_query(pairs: list[tuple[str, str]]) -> str:
    """Decode and re-encode each name and value (bytes, so non-UTF-8 escapes survive), sorted as botocore."""
    encoded = sorted(
        (quote(unquote_to_bytes(k), safe="-_.~"), quote(unquote_to_bytes(v), safe="-_.~")) for k, v in pairs
    )
    return "&".join(f"{k}={v}" for k, v in encoded)

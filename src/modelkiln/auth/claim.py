"""Parse, strictly, what a SigV4 request claims: key, scope, signed headers, time, signature.

Two carriers: the Authorization header, or a presigned URL's X-Amz-* query parameters. Anything ambiguous
(a duplicate, an unknown component, a scope that disagrees with the request time) is rejected as malformed
rather than guessed at.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

from modelkiln.auth.errors import AuthError
from modelkiln.auth.request import HttpRequest

ALGORITHM = "AWS4-HMAC-SHA256"
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
MAX_EXPIRES = 7 * 24 * 3600  # S3's limit for a presigned URL
_TIMESTAMP = re.compile(r"\d{8}T\d{6}Z")
_KEY_ID = re.compile(r"[A-Za-z0-9]{1,128}")
_REGION = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")  # botocore's validate_region_name
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token, lower-cased
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_HEADER_PARTS = ("Credential", "SignedHeaders", "Signature")
_QUERY_PARTS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
                "X-Amz-Signature")


@dataclass(frozen=True)
class Claim:
    """What the client says it signed; nothing here is verified yet."""

    access_key_id: str
    date: str  # the credential scope's YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str  # YYYYMMDDTHHMMSSZ, as it enters the string to sign
    expires: int | None  # seconds, for a presigned URL
    query_pairs: list[tuple[str, str]]  # raw (still percent-encoded), X-Amz-Signature left out


def _malformed(message: str) -> AuthError:
    return AuthError("malformed", message)


def parse_claim(request: HttpRequest, services: Collection[str]) -> Claim:
    """The claim of a header-signed or presigned request; AuthError 'missing' when it carries neither."""
    _check_path(request.path)
    pairs = [(k, v) for k, _, v in (p.partition("=") for p in request.query.split("&") if p)]
    auth_params = _auth_params(pairs)
    authorization = request.headers.get_all("authorization")
    if authorization and auth_params:
        raise _malformed("Only one auth mechanism allowed: an Authorization header or X-Amz-* query parameters.")
    if "x-amz-security-token" in request.headers or "X-Amz-Security-Token" in auth_params:
        raise AuthError("unknown_key", "The security token included in the request is invalid: this server "
                        "issues no session tokens (unset AWS_SESSION_TOKEN and sign with a Kiln access key).")
    if auth_params:
        claim = _from_query(auth_params, pairs, services)
    elif authorization:
        if len(authorization) > 1:
            raise _malformed("The Authorization header appears more than once.")
        claim = _from_header(authorization[0], request, pairs, services)
    else:
        raise AuthError("missing", "Missing Authentication Token: sign the request with AWS Signature Version 4.")
    unsigned = sorted(n for n in request.headers.names() if n.startswith("x-amz-") and n not in claim.signed_headers)
    if unsigned:
        raise AuthError("bad_signature", f"There were headers present in the request which were not signed: "
                        f"{', '.join(unsigned)}.")
    return claim


def _check_path(path: str) -> None:
    # A '#', '?' or space would make botocore's URL parsing see another path than the one the app routes.
    if not path.startswith("/") or not all(33 <= ord(c) <= 126 and c not in "#?" for c in path):
        raise _malformed("The request path must start with '/' and be percent-encoded printable ASCII.")


def _auth_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in pairs:
        name = unquote(key)
        if name in _QUERY_PARTS or name == "X-Amz-Security-Token":
            if name in found:
                raise _malformed(f"The query parameter {name} appears more than once.")
            found[name] = unquote(value)
    return found


def _from_header(value: str, request: HttpRequest, pairs: list[tuple[str, str]], services: Collection[str]) -> Claim:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _malformed(f"Unsupported authorization scheme {algorithm[:32]!r}: sign with AWS Signature "
                         f"Version 4 ({ALGORITHM}).")
    parts: dict[str, str] = {}
    for component in rest.split(","):
        name, eq, text = component.strip().partition("=")
        if not eq or name not in _HEADER_PARTS:
            raise _malformed(f"Unexpected Authorization component {name[:32]!r}; expected Credential=, "
                             "SignedHeaders= and Signature=.")
        if name in parts:
            raise _malformed(f"The Authorization component {name} appears more than once.")
        parts[name] = text
    missing = [name for name in _HEADER_PARTS if name not in parts]
    if missing:
        raise _malformed(f"The Authorization header lacks {', '.join(missing)}.")
    timestamp = _header_timestamp(request)
    claim = _claim(parts["Credential"], parts["SignedHeaders"], parts["Signature"], timestamp, None, pairs, services)
    if "x-amz-date" not in request.headers and "date" not in claim.signed_headers:
        raise _malformed("The Date header carries the request time, so it must be signed.")
    return claim


def _header_timestamp(request: HttpRequest) -> str:
    amz_date = request.headers.get_all("x-amz-date")
    if len(amz_date) > 1:
        raise _malformed("x-amz-date appears more than once.")
    if amz_date:
        return amz_date[0].strip()
    date = request.headers.get_all("date")
    if len(date) != 1:
        raise _malformed("A header-signed request needs one x-amz-date (or Date) header.")
    try:
        parsed = parsedate_to_datetime(date[0])
        if parsed.tzinfo is None:  # "-0000", as botocore writes it, means UTC (RFC 5322)
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc).strftime(SIGV4_TIMESTAMP)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year past C's long, or past 9999 in UTC
        raise _malformed("The Date header is not an HTTP date.") from None


def _from_query(params: dict[str, str], pairs: list[tuple[str, str]], services: Collection[str]) -> Claim:
    missing = [name for name in _QUERY_PARTS if name not in params]
    if missing:
        raise _malformed(f"The presigned URL lacks {', '.join(missing)}.")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise _malformed(f"X-Amz-Algorithm must be {ALGORITHM}.")
    expires = params["X-Amz-Expires"]
    if not re.fullmatch(r"[0-9]{1,7}", expires) or not 1 <= int(expires) <= MAX_EXPIRES:
        raise _malformed(f"X-Amz-Expires must be a number of seconds from 1 to {MAX_EXPIRES}.")
    signed_pairs = [(k, v) for k, v in pairs if unquote(k) != "X-Amz-Signature"]
    return _claim(params["X-Amz-Credential"], params["X-Amz-SignedHeaders"], params["X-Amz-Signature"],
                  params["X-Amz-Date"], int(expires), signed_pairs, services)


def _claim(credential: str, signed_headers: str, signature: str, timestamp: str, expires: int | None,
           pairs: list[tuple[str, str]], services: Collection[str]) -> Claim:
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _malformed("The Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request.")
    access_key_id, date, region, service, _ = scope
    if not _KEY_ID.fullmatch(access_key_id):
        raise _malformed("The access key id in the Credential is not well formed.")
    if not _REGION.fullmatch(region):
        raise _malformed(f"The region {region[:64]!r} in the Credential is not a valid region name.")
    if service not in services:
        raise _malformed(f"The Credential is scoped to service {service[:32]!r}; expected "
                         f"{' or '.join(repr(s) for s in sorted(services))}.")
    if not _TIMESTAMP.fullmatch(timestamp) or not _valid_time(timestamp):
        raise _malformed(f"The request time {timestamp[:32]!r} is not in the form YYYYMMDDTHHMMSSZ.")
    if date != timestamp[:8]:
        raise _malformed(f"The Credential date {date[:16]!r} does not match the request date {timestamp[:8]}.")
    names = tuple(signed_headers.split(";"))
    if not all(_HEADER_NAME.fullmatch(n) for n in names):
        raise _malformed("SignedHeaders must be lower-case header names separated by ';'.")
    if list(names) != sorted(set(names)):
        raise _malformed("SignedHeaders must be sorted and must not repeat a name.")
    if "host" not in names:
        raise _malformed("SignedHeaders must include host.")
    if not _SIGNATURE.fullmatch(signature):
        raise _malformed("The Signature must be 64 lower-case hex digits.")
    return Claim(access_key_id, date, region, service, names, signature, timestamp, expires, pairs)


def _valid_time(timestamp: str) -> bool:
    try:
        datetime.strptime(timestamp, SIGV4_TIMESTAMP)
    except ValueError:
        return False
    return True

"""Authentication failures: one generic `kind` each, mapped to each protocol's own wire code by a table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelkiln.errors import KilnError

Kind = Literal[
    "missing",  # no Authorization header and no presigned query
    "unknown_key",  # access key id not on record (or a session token we never issued)
    "bad_signature",  # the recomputed signature (header, chunk or trailer) differs
    "expired",  # presigned URL past X-Amz-Expires
    "skew",  # request time more than the allowed skew from the server clock
    "malformed",  # Authorization header / presigned query / credential scope not well formed
    "bad_digest",  # body differs from x-amz-content-sha256 or an x-amz-checksum-* value
    "incomplete_body",  # aws-chunked framing broken, truncated, or decoded length wrong
    "unsupported",  # well formed, but something this server cannot verify (e.g. crc32c without awscrt)
]


@dataclass(frozen=True)
class WireError:
    """What a protocol puts on the wire for an AuthError."""

    code: str
    message: str
    http_status: int


# awsJson 1.1 (SageMaker): the codes real AWS sends, see REFERENCE.md section 1. AWS reports an expired or
# skewed signature as InvalidSignatureException ("Signature expired: ..."), and a malformed header as
# IncompleteSignatureException; all 4xx so botocore does not retry them.
JSON_ERRORS: dict[str, tuple[str, int]] = {
    "missing": ("MissingAuthenticationTokenException", 403),
    "unknown_key": ("UnrecognizedClientException", 400),
    "bad_signature": ("InvalidSignatureException", 400),
    "expired": ("InvalidSignatureException", 400),
    "skew": ("InvalidSignatureException", 400),
    "malformed": ("IncompleteSignatureException", 400),
    "bad_digest": ("InvalidSignatureException", 400),
    "incomplete_body": ("ValidationException", 400),
    "unsupported": ("ValidationException", 400),
}

# S3 REST-XML: S3's documented error codes (an expired presigned URL is AccessDenied "Request has expired").
S3_ERRORS: dict[str, tuple[str, int]] = {
    "missing": ("AccessDenied", 403),
    "unknown_key": ("InvalidAccessKeyId", 403),
    "bad_signature": ("SignatureDoesNotMatch", 403),
    "expired": ("AccessDenied", 403),
    "skew": ("RequestTimeTooSkewed", 403),
    "malformed": ("AuthorizationHeaderMalformed", 400),
    "bad_digest": ("BadDigest", 400),
    "incomplete_body": ("IncompleteBody", 400),
    "unsupported": ("InvalidRequest", 400),
}


class AuthError(KilnError):
    """A request failed authentication; `message` is safe to send to the client (it never holds a secret)."""

    def __init__(self, kind: Kind, message: str, *, canonical_request: str = "", string_to_sign: str = "") -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: Kind = kind
        self.message = message
        # For bad_signature only: what the server signed, so a client author can diff it against their own
        # (S3 returns both in its error body). Neither reveals the key or the expected signature.
        self.canonical_request = canonical_request
        self.string_to_sign = string_to_sign

    def wire(self, table: dict[str, tuple[str, int]]) -> WireError:
        """The code and status this error has in a protocol's table (JSON_ERRORS or S3_ERRORS)."""
        code, status = table[self.kind]
        return WireError(code, self.message, status)

    def json(self) -> WireError:
        """As the awsJson (SageMaker) protocol reports it."""
        return self.wire(JSON_ERRORS)

    def s3(self) -> WireError:
        """As S3's REST-XML protocol reports it."""
        return self.wire(S3_ERRORS)

"""AWS Signature Version 4 for the agent's requests, with the standard library only (no botocore on a board).

The server checks these signatures exactly as it checks boto3's; tests/agent runs both against a real server.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, Optional
from urllib.parse import parse_qsl, quote, urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: Optional[str] = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(method: str, url: str, headers: Dict[str, str], payload_hash: str, credentials: Credentials,
         region: str, service: str, now: Optional[datetime] = None) -> Dict[str, str]:
    """The headers to send: the given ones plus Host, X-Amz-Date, X-Amz-Content-Sha256 and Authorization.

    `url`'s path must already be percent-encoded as it will be sent (S3 keys: quote(key, safe="/~")).
    """
    parts = urlsplit(url)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    out = dict(headers)
    out.update({"Host": parts.netloc, "X-Amz-Date": stamp, "X-Amz-Content-Sha256": payload_hash})
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token
    canonical_headers = {k.lower().strip(): " ".join(str(v).split()) for k, v in out.items()}
    names = sorted(canonical_headers)
    signed_headers = ";".join(names)
    query = "&".join(sorted(f"{_enc(k)}={_enc(v)}" for k, v in parse_qsl(parts.query, keep_blank_values=True)))
    canonical = "\n".join([method, parts.path or "/", query,
                           "".join(f"{n}:{canonical_headers[n]}\n" for n in names), signed_headers, payload_hash])
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, sha256_hex(canonical.encode())])
    key = ("AWS4" + credentials.secret_access_key).encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
                            f"SignedHeaders={signed_headers}, Signature={signature}")
    return out


def _enc(text: str) -> str:
    return quote(text, safe="-_.~")

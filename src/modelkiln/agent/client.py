"""A small client for a Kiln server: its awsJson operations (Kiln.* and SageMaker.*) and its S3 objects."""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple
from urllib.parse import quote

from modelkiln.agent.sigv4 import EMPTY_SHA256, Credentials, sha256_hex, sign

JSON_TYPE = "application/x-amz-json-1.1"


class CallError(Exception):
    """The server answered with an error (its awsJson __type or S3 code, and message), or could not be reached."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Client:
    endpoint: str  # http(s)://host:port of `kiln serve`
    credentials: Credentials
    region: str = "us-east-1"
    timeout_s: float = 60.0

    @classmethod
    def from_environ(cls, endpoint: Optional[str]) -> "Client":
        """Credentials and region from the usual AWS_* variables; the endpoint from --endpoint or
        AWS_ENDPOINT_URL."""
        url = endpoint or os.environ.get("AWS_ENDPOINT_URL")
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not url:
            raise CallError("MissingEndpoint", "give --endpoint URL (or set AWS_ENDPOINT_URL) of the Kiln server")
        if not key or not secret:
            raise CallError("MissingCredentials", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to an access "
                                                  "key of your Kiln account (`kiln accounts create` on the server)")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(url.rstrip("/"), Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN")), region)

    def call(self, operation: str, params: Dict[str, Any], timeout_s: Optional[float] = None) -> Dict[str, Any]:
        """One awsJson operation, e.g. call("Kiln.ListDevices", {}); the decoded response or CallError."""
        body = json.dumps(params).encode()
        service = "kiln" if operation.startswith("Kiln.") else "sagemaker"
        headers = sign("POST", self.endpoint + "/", {"Content-Type": JSON_TYPE, "X-Amz-Target": operation},
                       sha256_hex(body), self.credentials, self.region, service)
        status, data = self._send(urllib.request.Request(self.endpoint + "/", body, headers, method="POST"),
                                  timeout_s)
        try:
            decoded = json.loads(data or b"{}")
        except ValueError:
            decoded = {"__type": "BadResponse", "message": data[:200].decode("utf-8", "replace")}
        if status >= 300:
            code = str(decoded.get("__type", f"HTTP{status}")).rsplit("#", 1)[-1]
            raise CallError(code, str(decoded.get("message", decoded.get("Message", ""))), status)
        return decoded

    def download(self, uri: str, path: Path) -> Path:
        """GET an s3://bucket/key object of the account into path."""
        url = self._object_url(uri)
        headers = sign("GET", url, {}, EMPTY_SHA256, self.credentials, self.region, "s3")
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response, open(path, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except urllib.error.HTTPError as exc:
            raise _s3_error(exc, uri) from None
        except OSError as exc:
            raise CallError("Unreachable", f"cannot reach {self.endpoint}: {exc}") from None
        return path

    def upload(self, uri: str, path: Path) -> None:
        """PUT a file to an s3://bucket/key object of the account (signed over its SHA-256)."""
        data = path.read_bytes()
        url = self._object_url(uri)
        headers = sign("PUT", url, {"Content-Type": "application/octet-stream"}, sha256_hex(data),
                       self.credentials, self.region, "s3")
        self._send(urllib.request.Request(url, data, headers, method="PUT"), None, s3_uri=uri)

    def _object_url(self, uri: str) -> str:
        bucket, key = split_s3_uri(uri)
        return f"{self.endpoint}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"

    def _send(self, request: urllib.request.Request, timeout_s: Optional[float], s3_uri: str = "") -> Tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            if s3_uri:
                raise _s3_error(exc, s3_uri) from None
            return exc.code, exc.read()
        except OSError as exc:  # refused, reset, timed out, DNS
            raise CallError("Unreachable", f"cannot reach {self.endpoint}: {exc}") from None


def split_s3_uri(uri: str) -> Tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise CallError("ValidationException", f"{uri!r} is not an s3://bucket/key URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def _s3_error(exc: urllib.error.HTTPError, uri: str) -> CallError:
    text = exc.read().decode("utf-8", "replace")
    code = text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else f"HTTP{exc.code}"
    message = text.split("<Message>", 1)[1].split("</Message>", 1)[0] if "<Message>" in text else text[:200]
    return CallError(code, f"{uri}: {message}", exc.code)

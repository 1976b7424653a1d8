"""Every error the API sends, mapped from Kiln's typed errors in this one place.

awsJson 1.1 (SageMaker): HTTP 4xx + {"__type": code, "message": text}; S3: HTTP status + an <Error> XML body.
Client errors are always 4xx, because botocore retries 5xx. Anything unexpected is logged with its traceback
and answered 500 InternalFailure / InternalError without internals.
"""
from __future__ import annotations

import json
import logging
import re
from xml.sax.saxutils import escape

from starlette.responses import Response

from modelkiln.auth import AuthError
from modelkiln.errors import CompilationError, KilnError, ValidationError
from modelkiln.jobs.errors import JobError
from modelkiln.storage import StorageError

log = logging.getLogger("kiln.api")
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"


def json_error(exc: BaseException, request_id: str) -> Response:
    """The awsJson error response for exc."""
    code, status, message = _json_wire(exc)
    if not isinstance(exc, KilnError):
        log.error("request %s failed", request_id, exc_info=exc)
    body = json.dumps({"__type": code, "message": message})
    return Response(body, status, media_type=JSON_CONTENT_TYPE, headers={"x-amzn-RequestId": request_id})


def _json_wire(exc: BaseException) -> tuple[str, int, str]:
    if isinstance(exc, AuthError):
        wire = exc.json()
        return wire.code, wire.http_status, wire.message
    if isinstance(exc, ValidationError):
        return "ValidationException", 400, f"{exc.field}: {exc.message}"
    if isinstance(exc, JobError):
        return exc.code, exc.http_status, str(exc)
    if isinstance(exc, UnknownOperation):
        return "UnknownOperationException", 400, str(exc)
    if isinstance(exc, (StorageError, CompilationError, KilnError)):
        return "ValidationException", 400, str(exc)
    return "InternalFailure", 500, "The server hit an internal error; the request was not carried out. Retry it."


def s3_error(exc: BaseException, request_id: str, resource: str = "") -> Response:
    """The S3 REST-XML error response for exc; `resource` is the request path S3 echoes."""
    code, status, message = _s3_wire(exc)
    if not isinstance(exc, KilnError):  # a bug: keep the trace for the operator (501 NotImplemented is not one)
        log.error("request %s failed", request_id, exc_info=exc)
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{xml_text(code)}</Code><Message>{xml_text(message)}</Message>"
            f"<Resource>{xml_text(resource)}</Resource><RequestId>{xml_text(request_id)}</RequestId>"
            f"{_signature_details(exc)}</Error>")
    return Response(body, status, media_type="application/xml", headers={"x-amz-request-id": request_id})


def _s3_wire(exc: BaseException) -> tuple[str, int, str]:
    if isinstance(exc, AuthError):
        wire = exc.s3()
        return wire.code, wire.http_status, wire.message
    if isinstance(exc, StorageError):
        return exc.code, exc.http_status, exc.message
    if isinstance(exc, ValidationError):
        return "InvalidArgument", 400, f"{exc.field}: {exc.message}"
    if isinstance(exc, KilnError):
        return "InvalidRequest", 400, str(exc)
    return "InternalError", 500, "We encountered an internal error. Please try again."


def _signature_details(exc: BaseException) -> str:
    """S3 returns what it signed on SignatureDoesNotMatch, so a client author can diff it against their own."""
    if not isinstance(exc, AuthError) or not exc.canonical_request:
        return ""
    return (f"<StringToSign>{xml_text(exc.string_to_sign)}</StringToSign>"
            f"<CanonicalRequest>{xml_text(exc.canonical_request)}</CanonicalRequest>")


# What XML 1.0 cannot hold even as a character reference (controls, lone surrogates, U+FFFE/FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text escaped for an XML element; characters XML cannot hold (a path may decode to \\x00) are written
    as Python escapes, so the error body stays well-formed for the client's XML parser."""
    return escape(_NOT_XML.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text))


def client_disconnected(method: str, raw_path: str) -> None:
    """A client that closed its connection before sending the body it announced is not a server error:
    one INFO line (the raw path, so a decoded line break cannot forge another log line)."""
    log.info("client disconnected before sending the whole body: %s %s", method, raw_path)


class UnknownOperation(KilnError):
    """An X-Amz-Target this server does not implement."""

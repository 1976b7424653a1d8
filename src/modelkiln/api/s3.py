"""The embedded S3 endpoint (path-style: /bucket/key) over the object store.

Every request is SigV4-checked (headers or presigned query), then routed by method, level (service, bucket
or object) and the subresource flag in its query (`?uploads`, `?uploadId=`, `?delete`, ...) through
`_ROUTES`. To add an operation: write `async def op(call: _Call) -> Response` and register it there.
Account isolation is the store's: every store call names the caller's account. Bodies are decoded and
checked as they stream (signature, Content-MD5, x-amz-checksum-*) into a spooled temp file, so a large
upload never sits in memory; the blocking store runs in Starlette's thread pool.

Why past 400 lines: it is one table of S3 operations, each a short function next to its route, plus the
body intake they share (`_Digests`, `_receive`); XML lives in s3_xml.py. If it grows further, the body
intake is the part to move out.
"""
from __future__ import annotations

import base64
import hashlib
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import IO, BinaryIO
from urllib.parse import quote, unquote, unquote_to_bytes

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers as StarletteHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from modelkiln.api import s3_xml
from modelkiln.api.errors import s3_error
from modelkiln.api.services import Services
from modelkiln.api.signing import verify
from modelkiln.auth import Headers, Verified, body_decoder
from modelkiln.auth.checksums import CHECKSUMS, KNOWN, Hasher
from modelkiln.storage import (
    ByteRange, InvalidArgument, ObjectInfo, ObjectStore, StorageError, UnsupportedFeature, resolve_range,
)

MAX_OBJECT = 5 * 1024**3  # S3's limit for one PutObject or one part
SPOOL_MEMORY = 1024 * 1024  # bodies up to this stay in memory; larger ones go to a temp file
FLUSH = 1024 * 1024  # decoded bytes gathered before one write (and hash) in the thread pool
READ_CHUNK = 1024 * 1024
META = "x-amz-meta-"
CHECKSUM = "x-amz-checksum-"

# Query flags that select an S3 operation. One we have no route for is answered 501 rather than served as
# the plain operation (a GET ?acl must not return the object).
SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption", "intelligent-tiering",
    "inventory", "legal-hold", "lifecycle", "location", "logging", "metadataTable", "metrics", "notification",
    "object-lock", "ownershipControls", "policy", "policyStatus", "publicAccessBlock", "renameObject",
    "replication", "requestPayment", "restore", "retention", "select", "session", "tagging", "torrent",
    "uploadId", "uploads", "versionId", "versioning", "versions", "website",
})
# x-amz-server-side-encryption values whose key can be passed on; anything else is refused, not ignored
_KMS_MODES = ("aws:kms", "aws:kms:dsse")
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")  # beyond 19 digits no offset fits: ignored, as S3 does
# An integer parameter: ASCII digits only (str.isdigit() also takes '²', which int() refuses), and few enough
# that int() never meets its 4300-digit limit; every bound here has at most 10 digits.
_INTEGER = re.compile(r"[0-9]{1,12}")


def _client_error(code: str, status: int, message: str) -> StorageError:
    """An S3 error this endpoint raises itself (the store's own errors are classes in storage.base)."""
    error = StorageError(code, message)
    error.http_status = status
    return error


@dataclass
class _Call:
    """One authenticated S3 request, its target parsed from the path."""

    request: Request
    store: ObjectStore
    verified: Verified
    bucket: str
    key: str
    body_read: bool = False  # set once the whole request body has been received

    @property
    def account(self) -> str:
        return self.verified.principal.account_id

    @property
    def headers(self) -> StarletteHeaders:
        return self.request.headers

    def param(self, name: str) -> str | None:
        return self.request.query_params.get(name)


Handler = Callable[[_Call], Awaitable[Response]]


async def handle(request: Request, services: Services, request_id: str) -> Response:
    """Authenticate and serve one S3 request; every failure becomes S3's XML error (no body for HEAD)."""
    call: _Call | None = None
    try:
        verified = await verify(request, services, "s3", None)
        bucket, key = _split_path(request)
        call = _Call(request, services.objects, verified, bucket, key)
        response = await _route(request, bucket, key)(call)
    except ClientDisconnect:
        raise  # no one left to answer: app.py logs it
    except Exception as exc:  # s3_error maps every error, logging the unexpected ones
        response = s3_error(exc, request_id, request.url.path)
        if request.method == "HEAD":
            response = Response(status_code=response.status_code)
    response.headers["x-amz-request-id"] = request_id
    if _declares_body(request) and not (call and call.body_read):
        # Answered without taking the body (an early error, often to an Expect: 100-continue whose client
        # then never sends it): the connection's next bytes are not a request we can find, so end it.
        response.headers["connection"] = "close"
    return response


def _declares_body(request: Request) -> bool:
    return "transfer-encoding" in request.headers or request.headers.get("content-length", "0") != "0"


def _split_path(request: Request) -> tuple[str, str]:
    """(bucket, key) from the raw path; the key keeps every '/' after the bucket's ("a//b" stays itself)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    try:
        path = unquote_to_bytes(raw.partition(b"?")[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("the request path is not UTF-8 once percent-decoded") from None
    bucket, _, key = path.removeprefix("/").partition("/")
    return bucket, key


def _route(request: Request, bucket: str, key: str) -> Handler:
    level = "service" if not bucket else "bucket" if not key else "object"
    flags = [name for name in request.query_params if name in SUBRESOURCES]
    if "partNumber" in request.query_params and "uploadId" not in flags:
        flags.append("partNumber")  # GetObject/HeadObject of one part: not served
    flag = flags[0] if len(flags) == 1 else None
    handler = _ROUTES.get((request.method, level, flag)) if len(flags) <= 1 else None
    if handler is not None:
        return handler
    if flags:
        raise UnsupportedFeature(f"{request.method} {level} ?{'&'.join(flags)} is not an operation Kiln's S3 "
                                 "endpoint serves; it serves buckets, objects, listings and multipart uploads")
    raise _client_error("MethodNotAllowed", 405, f"{request.method} is not allowed on a {level}")


# service and buckets


async def list_buckets(call: _Call) -> Response:
    buckets = await run_in_threadpool(call.store.list_buckets, call.account)
    return _xml(s3_xml.list_buckets(call.account, buckets))


async def create_bucket(call: _Call) -> Response:
    await _read_xml(call)  # a CreateBucketConfiguration (region) is accepted and not needed: one store serves all
    await run_in_threadpool(call.store.create_bucket, call.account, call.bucket)
    return Response(headers={"location": f"/{call.bucket}"})


async def head_bucket(call: _Call) -> Response:
    await run_in_threadpool(call.store.head_bucket, call.account, call.bucket)
    return Response(headers={"x-amz-bucket-region": call.verified.principal.region})


async def delete_bucket(call: _Call) -> Response:
    await run_in_threadpool(call.store.delete_bucket, call.account, call.bucket)
    return Response(status_code=204)


async def get_bucket_location(call: _Call) -> Response:
    await run_in_threadpool(call.store.head_bucket, call.account, call.bucket)
    # Buckets have no region here; answering the region the client signed for keeps SDKs from redirecting.
    return _xml(s3_xml.bucket_location(call.verified.principal.region))


async def list_objects(call: _Call) -> Response:
    """ListObjectsV2 (list-type=2) or ListObjects v1, which paginates by marker instead of a token."""
    list_type = call.param("list-type")
    if list_type not in (None, "2"):
        raise InvalidArgument(f"list-type must be 2 or absent, not {list_type!r}")
    encoding = call.param("encoding-type")
    if encoding not in (None, "url"):
        raise InvalidArgument(f"encoding-type must be url or absent, not {encoding!r}")
    req = s3_xml.ListRequest(
        bucket=call.bucket, prefix=call.param("prefix") or "", delimiter=call.param("delimiter") or None,
        max_keys=_int_param(call, "max-keys", 1000, 0, 2**31 - 1), url_encoded=encoding == "url",
        continuation_token=call.param("continuation-token") or None, start_after=call.param("start-after") or None,
        marker=call.param("marker") or None)
    if list_type == "2":
        page = await run_in_threadpool(call.store.list_objects_v2, call.account, call.bucket, req.prefix,
                                       req.delimiter, req.max_keys, req.continuation_token, req.start_after)
        return _xml(s3_xml.list_objects_v2(req, page))
    page = await run_in_threadpool(call.store.list_objects_v2, call.account, call.bucket, req.prefix,
                                   req.delimiter, req.max_keys, None, _after_marker(req))
    return _xml(s3_xml.list_objects_v1(req, page, call.account))


def _after_marker(req: s3_xml.ListRequest) -> str | None:
    """Where a v1 listing resumes. A marker that is a common prefix ("dir/") skips every key under it, as
    S3 does; otherwise "dir/a" > "dir/" would fold into "dir/" again and repeat it on the next page."""
    marker, delimiter = req.marker, req.delimiter
    if marker and delimiter and marker.startswith(req.prefix) and marker.endswith(delimiter):
        rest = marker[len(req.prefix):]
        if rest.find(delimiter) == len(rest) - len(delimiter):
            return marker + "\U0010ffff"  # above every key that extends the prefix (keys are code point ordered)
    return marker


async def delete_objects(call: _Call) -> Response:
    keys, quiet = s3_xml.parse_delete(await _read_xml(call))
    await run_in_threadpool(call.store.head_bucket, call.account, call.bucket)  # bucket errors fail the request

    def delete_all() -> tuple[list[str], list[s3_xml.DeleteFailure]]:
        deleted, failed = [], []
        for key in keys:
            try:
                call.store.delete_object(call.account, call.bucket, key)
                deleted.append(key)
            except StorageError as e:
                failed.append(s3_xml.DeleteFailure(key, e.code, e.message))
        return deleted, failed

    deleted, failed = await run_in_threadpool(delete_all)
    return _xml(s3_xml.delete_result(deleted, failed, quiet))


# objects


async def put_object(call: _Call) -> Response:
    if "x-amz-copy-source" in call.headers:
        return await copy_object(call)
    kms_key = _sse_kms_key(call)
    await run_in_threadpool(call.store.head_bucket, call.account, call.bucket)  # fail before taking the body
    body, checksums = await _receive(call, MAX_OBJECT)
    with body:
        info = await run_in_threadpool(call.store.put_object, call.account, call.bucket, call.key, body,
                                       call.headers.get("content-type"), _metadata(call), checksums, kms_key)
    return Response(headers={"etag": info.etag, **_checksum_headers(info.checksums), **_sse_headers(info)})


async def copy_object(call: _Call) -> Response:
    """CopyObject within the caller's buckets; metadata is copied, or replaced with x-amz-metadata-directive."""
    src_bucket, src_key = _copy_source(call.headers["x-amz-copy-source"])
    directive = call.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise InvalidArgument("x-amz-metadata-directive must be COPY or REPLACE")
    if (src_bucket, src_key) == (call.bucket, call.key) and directive == "COPY":
        raise _client_error("InvalidRequest", 400, "This copy request is illegal because it is trying to copy "
                            "an object to itself without changing the object's metadata.")
    kms_key = _sse_kms_key(call)
    replace = (call.headers.get("content-type"), _metadata(call)) if directive == "REPLACE" else None

    def copy() -> ObjectInfo:
        source, reader = call.store.get_object(call.account, src_bucket, src_key)
        with reader:
            content_type, metadata = replace or (source.content_type, source.metadata)
            return call.store.put_object(call.account, call.bucket, call.key, reader, content_type, metadata,
                                         source.checksums, kms_key)

    info = await run_in_threadpool(copy)
    return _xml(s3_xml.copy_result(info), headers=_sse_headers(info))


async def get_object(call: _Call) -> Response:
    byte_range = _parse_range(call.headers.get("range"))
    info, reader = await run_in_threadpool(call.store.get_object, call.account, call.bucket, call.key, byte_range)
    try:
        headers = _object_headers(call, info, whole=byte_range is None)
        status = 200
        if byte_range is not None:
            first, last = resolve_range(byte_range, info.size)
            headers.update({"content-range": f"bytes {first}-{last}/{info.size}",
                            "content-length": str(last - first + 1)})
            status = 206
    except BaseException:
        reader.close()
        raise
    # The stream closes the reader when it ends; the background task also does when the client went away.
    return StreamingResponse(_stream(reader), status, headers=headers, background=BackgroundTask(reader.close))


async def head_object(call: _Call) -> Response:
    info = await run_in_threadpool(call.store.head_object, call.account, call.bucket, call.key)
    return Response(headers=_object_headers(call, info, whole=True))


async def delete_object(call: _Call) -> Response:
    await run_in_threadpool(call.store.delete_object, call.account, call.bucket, call.key)
    return Response(status_code=204)


# multipart uploads


async def create_multipart_upload(call: _Call) -> Response:
    upload_id = await run_in_threadpool(call.store.create_multipart_upload, call.account, call.bucket, call.key,
                                        call.headers.get("content-type"), _metadata(call), _sse_kms_key(call))
    headers = {}
    if "x-amz-checksum-algorithm" in call.headers:
        # parts are checked against the checksums they carry; the assembled object keeps the part ETags only
        headers["x-amz-checksum-algorithm"] = call.headers["x-amz-checksum-algorithm"]
    return _xml(s3_xml.initiate_multipart(call.bucket, call.key, upload_id), headers=headers)


async def upload_part(call: _Call) -> Response:
    if "x-amz-copy-source" in call.headers:
        raise UnsupportedFeature("UploadPartCopy is not served; copy objects over 5 GiB by downloading and "
                                 "uploading them")
    number = _int_param(call, "partNumber", None, 1, 10_000)
    await run_in_threadpool(call.store.head_bucket, call.account, call.bucket)  # fail before taking the body
    body, checksums = await _receive(call, MAX_OBJECT)
    with body:
        part = await run_in_threadpool(call.store.upload_part, call.account, call.bucket, call.key,
                                       _upload_id(call), number, body)
    return Response(headers={"etag": part.etag, **_checksum_headers(checksums)})


async def list_parts(call: _Call) -> Response:
    marker = _int_param(call, "part-number-marker", 0, 0, 10_000)
    max_parts = _int_param(call, "max-parts", 1000, 0, 1000)
    upload_id = _upload_id(call)
    parts = await run_in_threadpool(call.store.list_parts, call.account, call.bucket, call.key, upload_id)
    after = [p for p in parts if p.number > marker]
    page = after[:max_parts]
    return _xml(s3_xml.list_parts(call.bucket, call.key, upload_id, call.account, page, marker, max_parts,
                                  truncated=len(after) > len(page)))


async def complete_multipart_upload(call: _Call) -> Response:
    parts = s3_xml.parse_complete(await _read_xml(call))
    info = await run_in_threadpool(call.store.complete_multipart_upload, call.account, call.bucket, call.key,
                                   _upload_id(call), parts)
    location = f"{str(call.request.base_url).rstrip('/')}/{call.bucket}/{quote(call.key)}"
    return _xml(s3_xml.complete_multipart(location, info), headers=_sse_headers(info))


async def abort_multipart_upload(call: _Call) -> Response:
    await run_in_threadpool(call.store.abort_multipart_upload, call.account, call.bucket, call.key,
                            _upload_id(call))
    return Response(status_code=204)


_ROUTES: dict[tuple[str, str, str | None], Handler] = {
    ("GET", "service", None): list_buckets,
    ("PUT", "bucket", None): create_bucket,
    ("HEAD", "bucket", None): head_bucket,
    ("DELETE", "bucket", None): delete_bucket,
    ("GET", "bucket", "location"): get_bucket_location,
    ("GET", "bucket", None): list_objects,
    ("POST", "bucket", "delete"): delete_objects,
    ("PUT", "object", None): put_object,
    ("GET", "object", None): get_object,
    ("HEAD", "object", None): head_object,
    ("DELETE", "object", None): delete_object,
    ("POST", "object", "uploads"): create_multipart_upload,
    ("PUT", "object", "uploadId"): upload_part,
    ("GET", "object", "uploadId"): list_parts,
    ("POST", "object", "uploadId"): complete_multipart_upload,
    ("DELETE", "object", "uploadId"): abort_multipart_upload,
}


# request bodies


class _Digests:
    """Content-MD5 and the x-amz-checksum-* headers a body claims, checked against the bytes received."""

    def __init__(self, headers: StarletteHeaders) -> None:
        self.md5_claim = _content_md5(headers.get("content-md5"))
        self._md5 = hashlib.md5(usedforsecurity=False) if self.md5_claim is not None else None
        self.claimed: dict[str, str] = {}
        self._hashers: dict[str, Hasher] = {}
        for name, value in headers.items():
            algorithm = name.removeprefix(CHECKSUM)
            if name.startswith(CHECKSUM) and algorithm in KNOWN:
                if algorithm not in CHECKSUMS:
                    raise UnsupportedFeature(f"{name} cannot be checked here; send one of "
                                             f"{', '.join(CHECKSUM + a for a in sorted(CHECKSUMS))}")
                self.claimed[algorithm.upper()] = value.strip()
                self._hashers[algorithm.upper()] = CHECKSUMS[algorithm]()

    def update(self, data: bytes) -> None:
        if self._md5 is not None:
            self._md5.update(data)
        for hasher in self._hashers.values():
            hasher.update(data)

    def verify(self) -> None:
        """Raise BadDigest if the body is not the one its headers describe."""
        if self._md5 is not None and self._md5.digest() != self.md5_claim:
            raise _client_error("BadDigest", 400, "The Content-MD5 you specified did not match what we received.")
        for algorithm, hasher in self._hashers.items():
            if base64.b64encode(hasher.digest()).decode() != self.claimed[algorithm]:
                raise _client_error("BadDigest", 400, f"The {algorithm} you specified did not match the "
                                    "calculated checksum.")


def _content_md5(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        digest = b""
    if len(digest) != 16:
        raise _client_error("InvalidDigest", 400, "The Content-MD5 you specified is not valid.")
    return digest


async def _receive(call: _Call, limit: int) -> tuple[IO[bytes], dict[str, str]]:
    """The checked payload, spooled (memory, then a temp file) and rewound, and the checksums it carried.

    The caller closes the file. Signature, chunk and trailer checks are the decoder's; Content-MD5 and
    header checksums are checked here; trailer checksums were checked by the decoder.
    """
    digests = _Digests(call.headers)
    decoder = body_decoder(call.verified, Headers(call.request.headers.raw))
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    pending: list[bytes] = []
    pending_size = total = 0

    def write(pieces: list[bytes]) -> None:
        for piece in pieces:
            digests.update(piece)
            spool.write(piece)

    try:
        async for data in call.request.stream():
            for piece in decoder.feed(data):
                total += len(piece)
                if total > limit:
                    raise _client_error("EntityTooLarge", 400, f"The body exceeds the {limit}-byte limit.")
                pending.append(piece)
                pending_size += len(piece)
            if pending_size >= FLUSH:  # disk writes and hashing leave the event loop, a batch at a time
                await run_in_threadpool(write, pending)
                pending, pending_size = [], 0
        call.body_read = True
        trailers = decoder.finish()
        await run_in_threadpool(write, pending)
        digests.verify()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    from_trailers = {name.removeprefix(CHECKSUM).upper(): value for name, value in trailers.items()
                     if name.startswith(CHECKSUM)}
    return spool, {**digests.claimed, **from_trailers}


async def _read_xml(call: _Call) -> bytes:
    """A small request body (an XML document, or nothing), checked like any other."""
    body, _ = await _receive(call, s3_xml.MAX_XML_BODY)
    with body:
        return body.read()


# helpers


def _xml(body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, 200, headers=headers, media_type="application/xml")


def _int_param(call: _Call, name: str, default: int | None, low: int, high: int) -> int:
    value = call.param(name)
    if value is None or value == "":
        if default is None:
            raise InvalidArgument(f"{name} is required")
        return default
    if not _INTEGER.fullmatch(value) or not low <= int(value) <= high:
        raise InvalidArgument(f"{name} must be an integer from {low} to {high}, not {value[:64]!r}")
    return int(value)


def _upload_id(call: _Call) -> str:
    upload_id = call.param("uploadId")
    if not upload_id:
        raise InvalidArgument("uploadId is required")
    return upload_id


def _metadata(call: _Call) -> dict[str, str]:
    """x-amz-meta-* headers without the prefix; repeated fields are joined with ',' as S3 does."""
    out: dict[str, str] = {}
    for name, value in call.headers.items():
        if name.startswith(META):
            short = name[len(META):]
            out[short] = f"{out[short]},{value}" if short in out else value
    return out


def _sse_kms_key(call: _Call) -> str | None:
    """The KMS key to encrypt with, or None; SSE that cannot be honoured is refused rather than ignored."""
    mode = call.headers.get("x-amz-server-side-encryption")
    key = call.headers.get("x-amz-server-side-encryption-aws-kms-key-id")
    if mode is not None and mode not in _KMS_MODES:
        raise UnsupportedFeature(f"x-amz-server-side-encryption: {mode} is not supported; leave it out, or "
                                 "use aws:kms with x-amz-server-side-encryption-aws-kms-key-id on an S3-backed Kiln")
    if mode is not None and key is None:
        raise UnsupportedFeature("SSE-KMS needs the key named: add x-amz-server-side-encryption-aws-kms-key-id")
    return key


def _copy_source(value: str) -> tuple[str, str]:
    source, _, query = value.partition("?")
    if query and query not in ("versionId=null", "versionId="):
        raise UnsupportedFeature("this endpoint keeps no versions; copy without versionId")
    bucket, _, key = unquote(source).removeprefix("/").partition("/")
    if not bucket or not key:
        raise InvalidArgument("x-amz-copy-source must be bucket/key, URL-encoded")
    return bucket, key


def _parse_range(value: str | None) -> ByteRange | None:
    """A single 'bytes=' range; one that does not parse is ignored and the whole object sent, as S3 does."""
    match = _RANGE.fullmatch(value.strip()) if value else None
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:
        return None, int(match[2])
    start, end = int(match[1]), int(match[2]) if match[2] else None
    return None if end is not None and end < start else (start, end)


def _checksum_headers(checksums: dict[str, str]) -> dict[str, str]:
    return {CHECKSUM + algorithm.lower(): value for algorithm, value in checksums.items()}


def _sse_headers(info: ObjectInfo) -> dict[str, str]:
    if not info.sse:
        return {}
    headers = {"x-amz-server-side-encryption": info.sse.get("ServerSideEncryption", "aws:kms")}
    if info.sse.get("SSEKMSKeyId"):
        headers["x-amz-server-side-encryption-aws-kms-key-id"] = info.sse["SSEKMSKeyId"]
    return headers


_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")
_RESPONSE_OVERRIDES = ("content-type", "content-disposition", "content-encoding", "content-language",
                       "cache-control", "expires")


def _object_headers(call: _Call, info: ObjectInfo, whole: bool) -> dict[str, str]:
    """GetObject/HeadObject headers. Checksums are sent when asked for and only for the whole object, as
    S3 does: a client checks them against the bytes it got, and a range's bytes are not the object's."""
    headers = {
        "content-type": info.content_type,
        "content-length": str(info.size),
        "etag": info.etag,
        "last-modified": formatdate(info.last_modified, usegmt=True),
        "accept-ranges": "bytes",
        **{META + name: value for name, value in info.metadata.items()},
        **_sse_headers(info),
    }
    if whole and call.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        headers.update(_checksum_headers(info.checksums))
    for name in _RESPONSE_OVERRIDES:  # presigned links may choose these (response-content-type=...)
        # Spaces around a field value are not part of it (RFC 9110), and h11 refuses to send them: the
        # connection was dropped without an answer.
        value = (call.param(f"response-{name}") or "").strip(" \t")
        if value:
            if not _HEADER_VALUE.fullmatch(value):  # CR/LF would split the response; non-Latin-1 cannot be sent
                raise InvalidArgument(f"response-{name} must be printable Latin-1 text without line breaks")
            headers[name] = value
    return headers


async def _stream(reader: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await run_in_threadpool(reader.read, READ_CHUNK):
            yield chunk
    finally:
        reader.close()

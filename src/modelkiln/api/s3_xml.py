"""S3's REST-XML bodies: the results Kiln's S3 endpoint sends, and the few request bodies it reads.

Responses are built with xml.etree and carry S3's namespace, timestamps as ISO-8601 with milliseconds and Z
(what botocore parses). Request bodies are parsed by local tag name, so a body with or without the namespace
reads the same; a body with a DOCTYPE is refused before parsing, which rules out entity expansion.
"""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from modelkiln.storage import BucketInfo, ListPage, ObjectInfo, Part, StorageError

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# ASCII digits (str.isdigit() also takes '²', which int() refuses), few enough for int(); the store checks 1-10000
_PART_NUMBER = re.compile(r"[0-9]{1,5}")
MAX_XML_BODY = 4 * 1024 * 1024  # a completion of 10,000 parts is ~1.5 MB; DeleteObjects of 1000 long keys ~1.1 MB


class MalformedXML(StorageError):
    code, http_status = "MalformedXML", 400

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


def iso_time(seconds: float) -> str:
    """2024-05-01T12:00:00.123Z, as S3 writes times in XML."""
    millis = int(seconds * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _root(tag: str) -> ET.Element:
    return ET.Element(tag, {"xmlns": NS})


def _add(parent: ET.Element, tag: str, text: str | int | bool | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if isinstance(text, bool):
        child.text = "true" if text else "false"
    elif text is not None:
        child.text = str(text)
    return child


def _document(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _encode(text: str, url: bool) -> str:
    # encoding-type=url: botocore undoes it with unquote_plus, so '+' must travel as %2B (quote does that)
    return quote(text, safe="/") if url else text


def _owner(parent: ET.Element, account_id: str) -> None:
    owner = _add(parent, "Owner")
    _add(owner, "ID", account_id)
    _add(owner, "DisplayName", account_id)


def list_buckets(account_id: str, buckets: Sequence[BucketInfo]) -> bytes:
    """ListAllMyBucketsResult."""
    root = _root("ListAllMyBucketsResult")
    _owner(root, account_id)
    listed = _add(root, "Buckets")
    for bucket in buckets:
        entry = _add(listed, "Bucket")
        _add(entry, "Name", bucket.name)
        _add(entry, "CreationDate", iso_time(bucket.created))
    return _document(root)


def bucket_location(region: str) -> bytes:
    """LocationConstraint: empty for us-east-1, as S3 answers."""
    root = _root("LocationConstraint")
    if region != "us-east-1":
        root.text = region
    return _document(root)


@dataclass(frozen=True)
class ListRequest:
    """The parameters a listing was asked with, echoed in its result."""

    bucket: str
    prefix: str
    delimiter: str | None
    max_keys: int
    url_encoded: bool
    continuation_token: str | None = None  # v2
    start_after: str | None = None  # v2
    marker: str | None = None  # v1


def _contents(root: ET.Element, page: ListPage, url: bool, owner: str | None) -> None:
    for obj in page.objects:
        entry = _add(root, "Contents")
        _add(entry, "Key", _encode(obj.key, url))
        _add(entry, "LastModified", iso_time(obj.last_modified))
        _add(entry, "ETag", obj.etag)
        for algorithm in obj.checksums:
            _add(entry, "ChecksumAlgorithm", algorithm)
        _add(entry, "Size", obj.size)
        _add(entry, "StorageClass", "STANDARD")
        if owner is not None:
            _owner(entry, owner)
    for prefix in page.common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _encode(prefix, url))


def list_objects_v2(req: ListRequest, page: ListPage) -> bytes:
    """ListBucketResult of ListObjectsV2."""
    root = _root("ListBucketResult")
    _add(root, "Name", req.bucket)
    _add(root, "Prefix", _encode(req.prefix, req.url_encoded))
    if req.delimiter:
        _add(root, "Delimiter", _encode(req.delimiter, req.url_encoded))
    _add(root, "MaxKeys", req.max_keys)
    _add(root, "KeyCount", page.key_count)
    _add(root, "IsTruncated", page.is_truncated)
    if req.continuation_token:
        _add(root, "ContinuationToken", req.continuation_token)
    if page.next_continuation_token:
        _add(root, "NextContinuationToken", page.next_continuation_token)
    if req.start_after:
        _add(root, "StartAfter", _encode(req.start_after, req.url_encoded))
    if req.url_encoded:
        _add(root, "EncodingType", "url")
    _contents(root, page, req.url_encoded, None)
    return _document(root)


def list_objects_v1(req: ListRequest, page: ListPage, owner: str) -> bytes:
    """ListBucketResult of ListObjects (v1), paged by marker."""
    root = _root("ListBucketResult")
    _add(root, "Name", req.bucket)
    _add(root, "Prefix", _encode(req.prefix, req.url_encoded))
    _add(root, "Marker", _encode(req.marker or "", req.url_encoded))
    _add(root, "MaxKeys", req.max_keys)
    if req.delimiter:
        _add(root, "Delimiter", _encode(req.delimiter, req.url_encoded))
    _add(root, "IsTruncated", page.is_truncated)
    if page.is_truncated:
        # S3 sends NextMarker only with a delimiter; sending it always is allowed and spares clients a guess
        last = max([o.key for o in page.objects] + list(page.common_prefixes))
        _add(root, "NextMarker", _encode(last, req.url_encoded))
    if req.url_encoded:
        _add(root, "EncodingType", "url")
    _contents(root, page, req.url_encoded, owner)
    return _document(root)


def copy_result(info: ObjectInfo) -> bytes:
    """CopyObjectResult."""
    root = _root("CopyObjectResult")
    _add(root, "LastModified", iso_time(info.last_modified))
    _add(root, "ETag", info.etag)
    for algorithm, value in info.checksums.items():
        _add(root, f"Checksum{algorithm}", value)
    return _document(root)


def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    """InitiateMultipartUploadResult."""
    root = _root("InitiateMultipartUploadResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    return _document(root)


def list_parts(bucket: str, key: str, upload_id: str, owner: str, parts: Sequence[Part], marker: int,
               max_parts: int, truncated: bool) -> bytes:
    """ListPartsResult of one page of parts (those numbered above marker)."""
    root = _root("ListPartsResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    _add(root, "PartNumberMarker", marker)
    _add(root, "NextPartNumberMarker", parts[-1].number if parts else marker)
    _add(root, "MaxParts", max_parts)
    _add(root, "IsTruncated", truncated)
    for part in parts:
        entry = _add(root, "Part")
        _add(entry, "PartNumber", part.number)
        _add(entry, "ETag", part.etag)
        _add(entry, "Size", part.size)
    _owner(root, owner)  # S3 sends Initiator and Owner; Owner is enough for every client we know
    _add(root, "StorageClass", "STANDARD")
    return _document(root)


def complete_multipart(location: str, info: ObjectInfo) -> bytes:
    """CompleteMultipartUploadResult."""
    root = _root("CompleteMultipartUploadResult")
    _add(root, "Location", location)
    _add(root, "Bucket", info.bucket)
    _add(root, "Key", info.key)
    _add(root, "ETag", info.etag)
    return _document(root)


@dataclass(frozen=True)
class DeleteFailure:
    key: str
    code: str
    message: str


def delete_result(deleted: Sequence[str], failed: Sequence[DeleteFailure], quiet: bool) -> bytes:
    """DeleteResult of DeleteObjects; quiet mode reports failures only."""
    root = _root("DeleteResult")
    if not quiet:
        for key in deleted:
            _add(_add(root, "Deleted"), "Key", key)
    for failure in failed:
        entry = _add(root, "Error")
        _add(entry, "Key", failure.key)
        _add(entry, "Code", failure.code)
        _add(entry, "Message", failure.message)
    return _document(root)


# request bodies


def _parse(body: bytes, expected_root: str) -> ET.Element:
    head = body[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in body.lower():
        raise MalformedXML("XML with a DOCTYPE or entity declarations is not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise MalformedXML(f"The XML you provided was not well-formed: {e}") from None
    if _local(root.tag) != expected_root:
        raise MalformedXML(f"expected a <{expected_root}> document, got <{_local(root.tag)}>")
    return root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(parent: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in parent if _local(child.tag) == name]


def _text(parent: ET.Element, name: str) -> str | None:
    found = _children(parent, name)
    return (found[0].text or "") if found else None


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """The (part number, ETag) list of a CompleteMultipartUpload body, in the order given."""
    parts = []
    for part in _children(_parse(body, "CompleteMultipartUpload"), "Part"):
        number, etag = _text(part, "PartNumber"), _text(part, "ETag")
        if number is None or etag is None or not _PART_NUMBER.fullmatch(number.strip()):
            raise MalformedXML("every <Part> needs a <PartNumber> (an integer from 1 to 10000) and an <ETag>")
        parts.append((int(number), etag))
    return parts


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """The keys of a DeleteObjects body and its Quiet flag."""
    root = _parse(body, "Delete")
    keys = []
    for obj in _children(root, "Object"):
        key = _text(obj, "Key")
        if key is None:
            raise MalformedXML("every <Object> needs a <Key>")
        version = _text(obj, "VersionId")
        if version not in (None, "", "null"):
            raise MalformedXML("this endpoint keeps no versions; leave out <VersionId>")
        keys.append(key)
    if not keys or len(keys) > 1000:
        raise MalformedXML("a <Delete> names 1 to 1000 objects")
    return keys, (_text(root, "Quiet") or "").strip().lower() == "true"

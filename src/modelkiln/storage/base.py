"""Records, errors and the `ObjectStore` interface that every storage backend implements.

Every error carries S3's own error code and HTTP status, so the S3 endpoint maps them 1:1. Every store
method takes the caller's account id first: bucket names are one global namespace, each bucket is owned
by one account, and another account touching it gets AccessDenied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Protocol, Sequence, Union

from modelkiln.errors import KilnError

Body = Union[bytes, BinaryIO, Iterable[bytes]]
# (start, end) inclusive; (start, None) reads to the end; (None, n) reads the last n bytes.
ByteRange = tuple[Union[int, None], Union[int, None]]

DEFAULT_CONTENT_TYPE = "binary/octet-stream"  # what S3 reports when the writer gave none
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10_000
MAX_KEY_BYTES = 1024
MAX_KEYS = 1000


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object's description; listings from the S3 backend leave content_type and metadata empty."""

    bucket: str
    key: str
    size: int
    etag: str  # quoted, as S3 sends it: '"<md5 hex>"' or '"<hex>-<parts>"'
    last_modified: float  # seconds since the epoch
    content_type: str = DEFAULT_CONTENT_TYPE
    metadata: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)  # {"CRC32": base64, ...}
    sse: dict[str, str] | None = None  # {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": ...}


@dataclass(frozen=True)
class BucketInfo:
    """A bucket and the account that owns it."""

    name: str
    owner_account: str
    created: float


@dataclass(frozen=True)
class ListPage:
    """One page of ListObjectsV2: objects and folded common prefixes, key_count counting both."""

    objects: tuple[ObjectInfo, ...]
    common_prefixes: tuple[str, ...]
    is_truncated: bool
    next_continuation_token: str | None
    key_count: int


@dataclass(frozen=True)
class Part:
    """One uploaded part of a multipart upload."""

    number: int
    etag: str
    size: int


class StorageError(KilnError):
    """A store request failed; `code` is S3's error code for it, `http_status` the status S3 answers with."""

    code: str = "InternalError"
    http_status: int = 500

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _S3Error(StorageError):
    """A StorageError whose code is fixed by its class."""

    def __init__(self, message: str) -> None:
        super().__init__(type(self).code, message)


class NoSuchBucket(_S3Error):
    code, http_status = "NoSuchBucket", 404


class NoSuchKey(_S3Error):
    code, http_status = "NoSuchKey", 404


class BucketAlreadyExists(_S3Error):
    """The name is taken by another account (bucket names are global)."""

    code, http_status = "BucketAlreadyExists", 409


class BucketAlreadyOwnedByYou(_S3Error):
    code, http_status = "BucketAlreadyOwnedByYou", 409


class BucketNotEmpty(_S3Error):
    code, http_status = "BucketNotEmpty", 409


class AccessDenied(_S3Error):
    """The bucket belongs to another account."""

    code, http_status = "AccessDenied", 403


class InvalidBucketName(_S3Error):
    code, http_status = "InvalidBucketName", 400


class NoSuchUpload(_S3Error):
    code, http_status = "NoSuchUpload", 404


class InvalidPart(_S3Error):
    """A listed part was never uploaded, or its ETag does not match."""

    code, http_status = "InvalidPart", 400


class InvalidPartOrder(_S3Error):
    code, http_status = "InvalidPartOrder", 400


class EntityTooSmall(_S3Error):
    """A part other than the last is smaller than 5 MiB."""

    code, http_status = "EntityTooSmall", 400


class KeyTooLong(_S3Error):
    code, http_status = "KeyTooLongError", 400  # S3's code carries the "Error" suffix


class InvalidArgument(_S3Error):
    code, http_status = "InvalidArgument", 400


class InvalidRange(_S3Error):
    code, http_status = "InvalidRange", 416


class BadDigest(_S3Error):
    """A checksum the writer sent does not match the bytes received."""

    code, http_status = "BadDigest", 400


class UnsupportedFeature(_S3Error):
    """S3's NotImplemented (named so as not to shadow Python's NotImplemented); the message names the fix."""

    code, http_status = "NotImplemented", 501


# code -> class, for backends that receive S3 error codes (the S3 backend) and must raise the same classes
ERRORS_BY_CODE: dict[str, Callable[[str], StorageError]] = {cls.code: cls for cls in _S3Error.__subclasses__()}


class ObjectStore(Protocol):
    """Buckets, objects and multipart uploads, every call on behalf of `account_id`."""

    supports_kms: bool  # whether sse_kms_key_id can be honoured (else it raises UnsupportedFeature)

    def create_bucket(self, account_id: str, bucket: str) -> BucketInfo:
        """Create a bucket owned by the account; exactly one of racing creators wins."""

    def list_buckets(self, account_id: str) -> list[BucketInfo]:
        """The account's own buckets, by name."""

    def head_bucket(self, account_id: str, bucket: str) -> BucketInfo:
        """The bucket, if it exists and the account owns it."""

    def delete_bucket(self, account_id: str, bucket: str) -> None:
        """Delete an empty bucket (BucketNotEmpty otherwise); pending multipart uploads go with it."""

    def put_object(self, account_id: str, bucket: str, key: str, body: Body, content_type: str | None = None,
                   metadata: dict[str, str] | None = None, checksums: dict[str, str] | None = None,
                   sse_kms_key_id: str | None = None) -> ObjectInfo:
        """Store body under key atomically, streaming it; readers see the old object or the new, never part."""

    def get_object(self, account_id: str, bucket: str, key: str,
                   byte_range: ByteRange | None = None) -> tuple[ObjectInfo, BinaryIO]:
        """The object and an open reader of it (of byte_range only, if given); the caller closes the reader."""

    def head_object(self, account_id: str, bucket: str, key: str) -> ObjectInfo:
        """The object's description without its body."""

    def delete_object(self, account_id: str, bucket: str, key: str) -> None:
        """Delete the object; deleting a missing key succeeds, as in S3."""

    def list_objects_v2(self, account_id: str, bucket: str, prefix: str = "", delimiter: str | None = None,
                        max_keys: int = MAX_KEYS, continuation_token: str | None = None,
                        start_after: str | None = None) -> ListPage:
        """One page of keys in UTF-8 byte order, folded into common prefixes at the delimiter."""

    def create_multipart_upload(self, account_id: str, bucket: str, key: str, content_type: str | None = None,
                                metadata: dict[str, str] | None = None,
                                sse_kms_key_id: str | None = None) -> str:
        """Start a multipart upload to key; returns its upload id."""

    def upload_part(self, account_id: str, bucket: str, key: str, upload_id: str, part_number: int,
                    body: Body) -> Part:
        """Store part part_number (1..10000) of the upload, replacing an earlier part of that number."""

    def list_parts(self, account_id: str, bucket: str, key: str, upload_id: str) -> list[Part]:
        """The upload's parts so far, by number."""

    def complete_multipart_upload(self, account_id: str, bucket: str, key: str, upload_id: str,
                                  parts: Sequence[tuple[int, str]]) -> ObjectInfo:
        """Assemble the listed (number, etag) parts into the object atomically; the ETag is S3's '<md5>-N'."""

    def abort_multipart_upload(self, account_id: str, bucket: str, key: str, upload_id: str) -> None:
        """Discard the upload and its parts."""

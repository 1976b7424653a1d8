"""What the job layer needs from a store: S3 URIs, a presence check, and file uploads and downloads.

Jobs name models and artifacts by S3Uri / S3OutputLocation and move them only through these helpers (get_object
and put_object underneath), so nothing outside storage/ knows how a store lays out its files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelkiln.storage.base import InvalidArgument, NoSuchKey, ObjectInfo, ObjectStore
from modelkiln.storage.checks import validate_bucket_name


@dataclass(frozen=True)
class S3Uri:
    """s3://bucket/key; key may be empty or end with '/' when the URI names a prefix."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, name: str) -> S3Uri:
        """The URI of name under this prefix (S3OutputLocation + artifact name)."""
        return S3Uri(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)


def parse_s3_uri(uri: str) -> S3Uri:
    """Split s3://bucket/key; InvalidArgument if uri is not of that form."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidArgument(f"{uri!r} is not an S3 URI: expected s3://bucket/key")
    bucket, _, key = uri[len("s3://"):].partition("/")
    validate_bucket_name(bucket)
    return S3Uri(bucket, key)


def object_exists(store: ObjectStore, account_id: str, bucket: str, key: str) -> bool:
    """Whether the object exists (a missing bucket or someone else's bucket still raises)."""
    try:
        store.head_object(account_id, bucket, key)
    except NoSuchKey:
        return False
    return True


def download_file(store: ObjectStore, account_id: str, bucket: str, key: str, dest: Path) -> ObjectInfo:
    """Stream the object to dest, which appears whole or not at all."""
    info, body = store.get_object(account_id, bucket, key)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with body, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(body, out, 1024 * 1024)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return info


def upload_file(store: ObjectStore, account_id: str, source: Path, bucket: str, key: str,
                content_type: str | None = None, metadata: dict[str, str] | None = None,
                sse_kms_key_id: str | None = None) -> ObjectInfo:
    """Stream the file at source into the object at key (encrypted with that KMS key, if given)."""
    with open(source, "rb") as f:
        return store.put_object(account_id, bucket, key, f, content_type=content_type, metadata=metadata,
                                sse_kms_key_id=sse_kms_key_id)

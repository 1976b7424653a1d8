"""The local object store: buckets as directories under one root, objects as blobs plus JSON sidecars.

    <root>/secret               key that signs continuation tokens
    <root>/tmp/                 buckets being created or deleted
    <root>/buckets/<bucket>/    one bucket (layout in local_bucket.py, uploads in local_multipart.py)

Bucket names are checked against S3's rules before they become directory names; keys never become
paths (see local_bucket.py). A bucket is created by renaming a complete staging directory into place,
which fails if the name exists, so of racing creators exactly one wins. Everything that needs durability
is fsynced unless the store is opened with durable=False (for scratch stores and tests).
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO, Sequence

from modelkiln.storage import local_multipart as multipart
from modelkiln.storage.base import (
    DEFAULT_CONTENT_TYPE, MAX_KEYS, AccessDenied, Body, BucketAlreadyExists, BucketAlreadyOwnedByYou,
    BucketInfo, BucketNotEmpty, ByteRange, InvalidArgument, ListPage, NoSuchBucket, NoSuchKey, ObjectInfo,
    Part, UnsupportedFeature,
)
from modelkiln.storage.checks import (
    resolve_range, validate_bucket_name, validate_key, validate_max_keys, validate_metadata,
)
from modelkiln.storage.digest import normalize_checksums
from modelkiln.storage.files import fsync_dir, remove_quietly, temp_name, window, write_json_atomic
from modelkiln.storage.listing import build_page, make_token, read_token, token_scope
from modelkiln.storage.local_bucket import SUBDIRS, BucketDir, read_info

_NO_KMS = ("SSE-KMS needs an S3 backend; the local store does not encrypt. Serve Kiln with an S3 object "
           "store (open_store('https://...') / S3ObjectStore) or leave out the KMS key id")


def _refuse_kms(sse_kms_key_id: str | None) -> None:
    if sse_kms_key_id is not None:
        raise UnsupportedFeature(_NO_KMS)


class LocalObjectStore:
    """An ObjectStore in a local directory."""

    supports_kms = False  # KmsKeyId is refused, not ignored

    def __init__(self, root: Path | str, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        (self.root / "buckets").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        self._secret = self._load_secret()

    def _load_secret(self) -> bytes:
        path = self.root / "secret"
        if not path.exists():
            tmp = temp_name(self.root / "tmp")
            tmp.write_bytes(secrets.token_bytes(32))
            try:
                os.link(tmp, path)  # fails if another process got there first: everyone uses the first secret
            except FileExistsError:
                pass
            finally:
                remove_quietly(tmp)
        return path.read_bytes()

    def _bucket(self, account_id: str, bucket: str) -> BucketDir:
        validate_bucket_name(bucket)
        path = self.root / "buckets" / bucket
        info = read_info(path)
        if info is None:
            raise NoSuchBucket(f"The specified bucket does not exist: {bucket}")
        if info.owner_account != account_id:
            raise AccessDenied(f"Access Denied: bucket {bucket} belongs to another account")
        return BucketDir(path, info, self.durable)

    # buckets

    def create_bucket(self, account_id: str, bucket: str) -> BucketInfo:
        """Create a bucket owned by the account; exactly one of racing creators wins."""
        validate_bucket_name(bucket)
        if not isinstance(account_id, str) or not account_id:
            raise InvalidArgument("account id must be a non-empty string")
        info = BucketInfo(bucket, account_id, time.time())
        staging = temp_name(self.root / "tmp")
        staging.mkdir()
        try:
            for sub in SUBDIRS:
                (staging / sub).mkdir()
            (staging / "lock").touch()
            write_json_atomic(staging / "bucket.json", asdict(info), staging / "tmp", self.durable)
            os.rename(staging, self.root / "buckets" / bucket)  # a bucket directory is never empty: taken -> error
            if self.durable:
                fsync_dir(self.root / "buckets")
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            existing = read_info(self.root / "buckets" / bucket)
            if existing is not None and existing.owner_account == account_id:
                raise BucketAlreadyOwnedByYou(f"You already own bucket {bucket}") from None
            raise BucketAlreadyExists(f"The requested bucket name {bucket} is not available; "
                                      "bucket names are shared by all accounts: choose another") from None
        return info

    def list_buckets(self, account_id: str) -> list[BucketInfo]:
        """The account's own buckets, by name."""
        found = []
        with os.scandir(self.root / "buckets") as entries:
            for entry in entries:
                info = read_info(Path(entry.path))
                if info is not None and info.owner_account == account_id:
                    found.append(info)
        return sorted(found, key=lambda b: b.name)

    def head_bucket(self, account_id: str, bucket: str) -> BucketInfo:
        """The bucket, if it exists and the account owns it."""
        return self._bucket(account_id, bucket).info

    def delete_bucket(self, account_id: str, bucket: str) -> None:
        """Delete an empty bucket; its pending multipart uploads go with it."""
        b = self._bucket(account_id, bucket)
        trash = temp_name(self.root / "tmp")
        with b.lock(shared=False):  # no writer is between staging and commit while we hold this
            if not b.is_empty():
                raise BucketNotEmpty(f"The bucket {bucket} you tried to delete is not empty")
            os.rename(b.path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # objects

    def put_object(self, account_id: str, bucket: str, key: str, body: Body, content_type: str | None = None,
                   metadata: dict[str, str] | None = None, checksums: dict[str, str] | None = None,
                   sse_kms_key_id: str | None = None) -> ObjectInfo:
        """Store body under key atomically, streaming it in bounded memory."""
        _refuse_kms(sse_kms_key_id)
        validate_key(key)
        meta = validate_metadata(metadata)
        b = self._bucket(account_id, bucket)
        staged = b.stage(body, normalize_checksums(checksums))
        return b.commit(key, staged, content_type or DEFAULT_CONTENT_TYPE, meta)

    def get_object(self, account_id: str, bucket: str, key: str,
                   byte_range: ByteRange | None = None) -> tuple[ObjectInfo, BinaryIO]:
        """The object and an open reader of it (of byte_range only, if given); the caller closes the reader."""
        validate_key(key)
        opened = self._bucket(account_id, bucket).open(key)
        if opened is None:
            raise NoSuchKey(f"The specified key does not exist: {key}")
        info, f = opened
        if byte_range is None:
            return info, f
        try:
            first, last = resolve_range(byte_range, info.size)
        except BaseException:
            f.close()
            raise
        return info, window(f, first, last)

    def head_object(self, account_id: str, bucket: str, key: str) -> ObjectInfo:
        """The object's description without its body."""
        validate_key(key)
        info = self._bucket(account_id, bucket).describe(key)
        if info is None:
            raise NoSuchKey(f"The specified key does not exist: {key}")
        return info

    def delete_object(self, account_id: str, bucket: str, key: str) -> None:
        """Delete the object; a missing key is not an error."""
        validate_key(key)
        self._bucket(account_id, bucket).remove(key)

    def list_objects_v2(self, account_id: str, bucket: str, prefix: str = "", delimiter: str | None = None,
                        max_keys: int = MAX_KEYS, continuation_token: str | None = None,
                        start_after: str | None = None) -> ListPage:
        """One page of keys in UTF-8 byte order, folded into common prefixes at the delimiter."""
        b = self._bucket(account_id, bucket)
        max_keys = validate_max_keys(max_keys)
        scope = token_scope(bucket, prefix, delimiter or None)
        after = read_token(self._secret, scope, continuation_token) if continuation_token else ""
        keys = b.keys(prefix)
        if start_after:
            keys = [k for k in keys if k > start_after]
        return build_page(keys, b.describe, prefix, delimiter or None, max_keys, after,
                          lambda last: make_token(self._secret, scope, last))

    # multipart uploads

    def create_multipart_upload(self, account_id: str, bucket: str, key: str, content_type: str | None = None,
                                metadata: dict[str, str] | None = None,
                                sse_kms_key_id: str | None = None) -> str:
        """Start a multipart upload to key; returns its upload id."""
        _refuse_kms(sse_kms_key_id)
        validate_key(key)
        meta = validate_metadata(metadata)
        return multipart.create_upload(self._bucket(account_id, bucket), key, content_type or DEFAULT_CONTENT_TYPE,
                                       meta)

    def upload_part(self, account_id: str, bucket: str, key: str, upload_id: str, part_number: int,
                    body: Body) -> Part:
        """Store one part of the upload, replacing an earlier part of that number."""
        return multipart.upload_part(self._bucket(account_id, bucket), key, upload_id, part_number, body)

    def list_parts(self, account_id: str, bucket: str, key: str, upload_id: str) -> list[Part]:
        """The upload's parts so far, by number."""
        return multipart.list_parts(self._bucket(account_id, bucket), key, upload_id)

    def complete_multipart_upload(self, account_id: str, bucket: str, key: str, upload_id: str,
                                  parts: Sequence[tuple[int, str]]) -> ObjectInfo:
        """Assemble the listed (number, etag) parts into the object atomically."""
        return multipart.complete(self._bucket(account_id, bucket), key, upload_id, parts)

    def abort_multipart_upload(self, account_id: str, bucket: str, key: str, upload_id: str) -> None:
        """Discard the upload and its parts."""
        multipart.abort(self._bucket(account_id, bucket), key, upload_id)

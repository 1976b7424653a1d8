"""Kiln's object store: a local directory (default) or any S3 endpoint, behind one `ObjectStore` interface.

    store = open_store("/var/lib/kiln/objects")          # or file:///..., s3://?region=..., https://host:port
    store.put_object(account, "models", "resnet/model.tar.gz", f)
    info, body = store.get_object(account, "models", "resnet/model.tar.gz")

To add a backend: implement `ObjectStore` (base.py), raising base.py's errors, check arguments with
checks.py, and run the shared contract tests in tests/storage/test_store.py against it.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from modelkiln.storage.base import (
    AccessDenied, BadDigest, BucketAlreadyExists, BucketAlreadyOwnedByYou, BucketInfo, BucketNotEmpty, ByteRange,
    EntityTooSmall, InvalidArgument, InvalidBucketName, InvalidPart, InvalidPartOrder, InvalidRange, KeyTooLong,
    ListPage, NoSuchBucket, NoSuchKey, NoSuchUpload, ObjectInfo, ObjectStore, Part, StorageError, UnsupportedFeature,
)
from modelkiln.storage.checks import resolve_range
from modelkiln.storage.local import LocalObjectStore
from modelkiln.storage.transfer import S3Uri, download_file, object_exists, parse_s3_uri, upload_file

_FORMS = ("a directory path, file:///path, s3://?region=R&prefix=P (AWS), "
          "or http(s)://[ACCESS_KEY:SECRET_KEY@]host[:port]?region=R&prefix=P (any S3 endpoint); "
          "add accounts=shared to let every Kiln account use the same buckets")


def open_store(url: str) -> ObjectStore:
    """The store url names: a path or file:///path is local; s3:// is AWS; http(s)://host is an S3 endpoint."""
    parts = urlsplit(url)
    if parts.scheme == "" or (parts.scheme == "file" and parts.netloc in ("", "localhost")):
        return LocalObjectStore(Path(unquote(parts.path) if parts.scheme else url))
    if parts.scheme not in ("s3", "http", "https"):
        raise InvalidArgument(f"cannot open object store {url!r}: give {_FORMS}")
    if parts.scheme == "s3" and parts.hostname:
        raise InvalidArgument(f"{url!r}: s3:// means AWS itself and takes no host; for another endpoint give {_FORMS}")
    from modelkiln.storage.s3 import S3ObjectStore  # boto3 is needed only by those who use S3

    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    host = parts.hostname or ""
    endpoint = None if parts.scheme == "s3" else f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    return S3ObjectStore(endpoint, query.get("region", "us-east-1"),
                         unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None, query.get("prefix"),
                         separate_accounts=_accounts_mode(query.get("accounts", "separate"), url))


def _accounts_mode(value: str, url: str) -> bool:
    if value not in ("separate", "shared"):
        raise InvalidArgument(f"{url!r}: accounts={value} must be 'separate' (default: each Kiln account its own "
                              "buckets) or 'shared' (all accounts use the same buckets)")
    return value == "separate"


__all__ = [
    "AccessDenied", "BadDigest", "BucketAlreadyExists", "BucketAlreadyOwnedByYou", "BucketInfo", "BucketNotEmpty",
    "ByteRange", "EntityTooSmall", "InvalidArgument", "InvalidBucketName", "InvalidPart", "InvalidPartOrder",
    "InvalidRange", "KeyTooLong", "ListPage", "LocalObjectStore", "NoSuchBucket", "NoSuchKey", "NoSuchUpload",
    "ObjectInfo", "ObjectStore", "Part", "S3Uri", "StorageError", "UnsupportedFeature", "download_file",
    "object_exists", "open_store", "parse_s3_uri", "resolve_range", "upload_file",
]

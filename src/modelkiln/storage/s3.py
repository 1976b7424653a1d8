"""ObjectStore over any S3-compatible endpoint (AWS S3, MinIO, Ceph, moto, ...) through boto3.

The store acts with one set of credentials. `bucket_prefix` maps Kiln bucket names onto a slice of the
remote namespace: Kiln's bucket "models" is the physical bucket prefix + "models", and list_buckets shows
only buckets carrying the prefix. With `separate_accounts` (what `kiln serve` uses unless told
`accounts=shared`), each Kiln account gets its own slice, prefix + "<account id>-" + name, so no account
can name another's buckets; without it every account sees every bucket the credentials reach (one tenant
using its existing buckets by their own names).

Bodies are spooled (in memory up to 8 MiB, then to a temp file) so the request can carry a length and a
Content-MD5 whatever the body's type. Creating a bucket in us-east-1 succeeds silently in S3 when the
caller already owns it, so create_bucket asks first to report BucketAlreadyOwnedByYou consistently.
"""
from __future__ import annotations

import base64
import tempfile
import time
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterator, Sequence, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from modelkiln.storage.base import (
    DEFAULT_CONTENT_TYPE, ERRORS_BY_CODE, MAX_KEYS, AccessDenied, Body, BucketAlreadyExists, BucketAlreadyOwnedByYou,
    BucketInfo, ByteRange, InvalidArgument, ListPage, NoSuchBucket, NoSuchKey, ObjectInfo,
    Part, StorageError,
)
from modelkiln.storage.checks import (
    range_header, validate_bucket_name, validate_key, validate_max_keys, validate_metadata, validate_part_list,
    validate_part_number,
)
from modelkiln.storage.digest import BodyDigest, iter_chunks, normalize_checksums

SPOOL_IN_MEMORY = 8 * 1024 * 1024
_CHECKSUM_FIELDS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")


def _translate(error: ClientError, missing: Callable[[str], StorageError]) -> StorageError:
    """The StorageError for a ClientError; a bodiless 404 (HEAD) becomes `missing`."""
    detail = error.response.get("Error", {})
    code, message = str(detail.get("Code", "")), str(detail.get("Message") or error)
    if code in ERRORS_BY_CODE:
        return ERRORS_BY_CODE[code](message)
    if code in ("404", "NotFound"):
        return missing(message)
    if code in ("403", "Forbidden"):
        return AccessDenied(message)
    translated = StorageError(code or "InternalError", message)
    translated.http_status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
    return translated


@contextmanager
def _s3_errors(missing: Callable[[str], StorageError] = NoSuchBucket) -> Iterator[None]:
    try:
        yield
    except ClientError as e:
        raise _translate(e, missing) from e
    except ParamValidationError as e:
        raise InvalidArgument(str(e)) from e
    except BotoCoreError as e:  # connection refused, timeouts, ...
        failed = StorageError("ServiceUnavailable", f"the S3 request failed: {e}")
        failed.http_status = 503
        raise failed from e


@contextmanager
def _spooled(body: Body, algorithms: Sequence[str] = ()) -> Iterator[tuple[BinaryIO, BodyDigest]]:
    """body copied to a seekable spool (bounded memory), rewound, with its digests."""
    digest = BodyDigest(algorithms)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        for chunk in iter_chunks(body):
            digest.update(chunk)
            spool.write(chunk)
        spool.seek(0)
        yield cast(BinaryIO, spool), digest


def _sse_args(sse_kms_key_id: str | None) -> dict[str, str]:
    return {} if sse_kms_key_id is None else {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": sse_kms_key_id}


def _sse(response: dict) -> dict[str, str] | None:
    sse = {k: response[k] for k in ("ServerSideEncryption", "SSEKMSKeyId") if response.get(k)}
    return sse or None


def _checksums(response: dict) -> dict[str, str]:
    return {alg: response[f"Checksum{alg}"] for alg in _CHECKSUM_FIELDS if response.get(f"Checksum{alg}")}


class S3ObjectStore:
    """An ObjectStore backed by an S3-compatible service (see the module docstring on accounts)."""

    supports_kms = True  # KmsKeyId is passed on as SSE-KMS

    def __init__(self, endpoint_url: str | None, region: str = "us-east-1", access_key: str | None = None,
                 secret_key: str | None = None, bucket_prefix: str | None = None,
                 separate_accounts: bool = False) -> None:
        self.region = region
        self.bucket_prefix = bucket_prefix or ""
        self.separate_accounts = separate_accounts
        style = "path" if endpoint_url else "virtual"  # self-hosted endpoints rarely have wildcard DNS
        self._client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": style}, retries={"max_attempts": 3, "mode": "standard"}))

    def _account_prefix(self, account_id: str) -> str:
        return self.bucket_prefix + (f"{account_id}-" if self.separate_accounts else "")

    def _name(self, account_id: str, bucket: str) -> str:
        validate_bucket_name(bucket)
        prefix = self._account_prefix(account_id)
        physical = prefix + bucket
        if prefix:
            validate_bucket_name(physical)
        return physical

    def _info(self, bucket: str, key: str, r: dict, size: int | None = None) -> ObjectInfo:
        return ObjectInfo(bucket, key, r["ContentLength"] if size is None else size, r["ETag"],
                          r["LastModified"].timestamp(), r.get("ContentType") or DEFAULT_CONTENT_TYPE,
                          dict(r.get("Metadata") or {}), _checksums(r), _sse(r))

    # buckets

    def create_bucket(self, account_id: str, bucket: str) -> BucketInfo:
        """Create the bucket with the configured credentials."""
        name = self._name(account_id, bucket)
        try:
            self.head_bucket(account_id, bucket)
        except NoSuchBucket:
            pass
        except AccessDenied:
            raise BucketAlreadyExists(f"The requested bucket name {bucket} is not available") from None
        else:
            raise BucketAlreadyOwnedByYou(f"You already own bucket {bucket}")
        args: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with _s3_errors():
            self._client.create_bucket(**args)
        return BucketInfo(bucket, account_id, time.time())

    def list_buckets(self, account_id: str) -> list[BucketInfo]:
        """The credentials' buckets that carry bucket_prefix (and the account's prefix, if separate), by name."""
        with _s3_errors():
            found = self._client.list_buckets().get("Buckets", [])
        prefix = self._account_prefix(account_id)
        n = len(prefix)
        return sorted((BucketInfo(b["Name"][n:], account_id, b["CreationDate"].timestamp())
                       for b in found if b["Name"].startswith(prefix) and len(b["Name"]) > n),
                      key=lambda b: b.name)

    def head_bucket(self, account_id: str, bucket: str) -> BucketInfo:
        """The bucket, if the credentials can reach it; its creation time comes from ListBuckets."""
        with _s3_errors(NoSuchBucket):
            self._client.head_bucket(Bucket=self._name(account_id, bucket))
        for info in self.list_buckets(account_id):
            if info.name == bucket:
                return info
        return BucketInfo(bucket, account_id, 0.0)  # reachable but not ours to list: creation time unknown

    def delete_bucket(self, account_id: str, bucket: str) -> None:
        """Delete an empty bucket."""
        with _s3_errors():
            self._client.delete_bucket(Bucket=self._name(account_id, bucket))

    # objects

    def put_object(self, account_id: str, bucket: str, key: str, body: Body, content_type: str | None = None,
                   metadata: dict[str, str] | None = None, checksums: dict[str, str] | None = None,
                   sse_kms_key_id: str | None = None) -> ObjectInfo:
        """Upload body in one request (S3 caps these at 5 GiB: larger objects need multipart)."""
        name, meta, wanted = self._name(account_id, bucket), validate_metadata(metadata), normalize_checksums(checksums)
        validate_key(key)
        with _spooled(body, list(wanted)) as (spool, digest):
            digest.verify(wanted)
            args: dict[str, Any] = {"Bucket": name, "Key": key, "Body": spool, "ContentLength": digest.size,
                                    "ContentMD5": base64.b64encode(digest.md5).decode(), "Metadata": meta,
                                    **_sse_args(sse_kms_key_id)}
            if content_type:
                args["ContentType"] = content_type
            for alg, value in wanted.items():  # naming the algorithm too makes every server keep the value
                args.update({"ChecksumAlgorithm": alg, f"Checksum{alg}": value})
            with _s3_errors():
                r = self._client.put_object(**args)
        return ObjectInfo(bucket, key, digest.size, r["ETag"], time.time(), content_type or DEFAULT_CONTENT_TYPE,
                          meta, _checksums(r) or wanted, _sse(r))

    def get_object(self, account_id: str, bucket: str, key: str,
                   byte_range: ByteRange | None = None) -> tuple[ObjectInfo, BinaryIO]:
        """The object and its streaming body (of byte_range only, if given); the caller closes the body."""
        validate_key(key)
        args: dict[str, Any] = {"Bucket": self._name(account_id, bucket), "Key": key, "ChecksumMode": "ENABLED"}
        if byte_range is not None:
            args["Range"] = range_header(byte_range)
        with _s3_errors(NoSuchKey):
            r = self._client.get_object(**args)
        total = r.get("ContentRange", "").rpartition("/")[2]  # "bytes 0-9/100": the whole object's size
        info = self._info(bucket, key, r, int(total) if total.isdigit() else None)
        return info, cast(BinaryIO, r["Body"])

    def head_object(self, account_id: str, bucket: str, key: str) -> ObjectInfo:
        """The object's description without its body."""
        name = self._name(account_id, bucket)
        validate_key(key)
        try:
            with _s3_errors(NoSuchKey):
                r = self._client.head_object(Bucket=name, Key=key, ChecksumMode="ENABLED")
        except NoSuchKey:
            self.head_bucket(account_id, bucket)  # a HEAD 404 does not say whether the bucket or the key is missing
            raise
        return self._info(bucket, key, r)

    def delete_object(self, account_id: str, bucket: str, key: str) -> None:
        """Delete the object; a missing key is not an error."""
        name = self._name(account_id, bucket)
        validate_key(key)
        with _s3_errors():
            self._client.delete_object(Bucket=name, Key=key)

    def list_objects_v2(self, account_id: str, bucket: str, prefix: str = "", delimiter: str | None = None,
                        max_keys: int = MAX_KEYS, continuation_token: str | None = None,
                        start_after: str | None = None) -> ListPage:
        """One page of keys from the service; its continuation tokens pass through unchanged."""
        args: dict[str, Any] = {"Bucket": self._name(account_id, bucket), "Prefix": prefix, "MaxKeys": validate_max_keys(max_keys)}
        optional = {"Delimiter": delimiter, "ContinuationToken": continuation_token, "StartAfter": start_after}
        args.update({k: v for k, v in optional.items() if v})
        with _s3_errors():
            r = self._client.list_objects_v2(**args)
        objects = tuple(ObjectInfo(bucket, o["Key"], o["Size"], o["ETag"], o["LastModified"].timestamp(), "")
                        for o in r.get("Contents", []))
        prefixes = tuple(p["Prefix"] for p in r.get("CommonPrefixes", []))
        return ListPage(objects, prefixes, bool(r.get("IsTruncated")), r.get("NextContinuationToken"),
                        len(objects) + len(prefixes))

    # multipart uploads

    def create_multipart_upload(self, account_id: str, bucket: str, key: str, content_type: str | None = None,
                                metadata: dict[str, str] | None = None,
                                sse_kms_key_id: str | None = None) -> str:
        """Start a multipart upload to key; returns its upload id."""
        validate_key(key)
        args: dict[str, Any] = {"Bucket": self._name(account_id, bucket), "Key": key, "Metadata": validate_metadata(metadata),
                                **_sse_args(sse_kms_key_id)}
        if content_type:
            args["ContentType"] = content_type
        with _s3_errors():
            return str(self._client.create_multipart_upload(**args)["UploadId"])

    def upload_part(self, account_id: str, bucket: str, key: str, upload_id: str, part_number: int,
                    body: Body) -> Part:
        """Upload one part."""
        name = self._name(account_id, bucket)
        validate_part_number(part_number)
        with _spooled(body) as (spool, digest), _s3_errors():
            r = self._client.upload_part(Bucket=name, Key=key, UploadId=upload_id, PartNumber=part_number,
                                         Body=spool, ContentLength=digest.size,
                                         ContentMD5=base64.b64encode(digest.md5).decode())
        return Part(part_number, r["ETag"], digest.size)

    def list_parts(self, account_id: str, bucket: str, key: str, upload_id: str) -> list[Part]:
        """The upload's parts so far, by number."""
        pages = self._client.get_paginator("list_parts").paginate(Bucket=self._name(account_id, bucket), Key=key,
                                                                   UploadId=upload_id)
        with _s3_errors():
            return [Part(p["PartNumber"], p["ETag"], p["Size"]) for page in pages for p in page.get("Parts", [])]

    def complete_multipart_upload(self, account_id: str, bucket: str, key: str, upload_id: str,
                                  parts: Sequence[tuple[int, str]]) -> ObjectInfo:
        """Assemble the listed (number, etag) parts into the object."""
        validate_part_list(parts)  # S3 checks this too, but not every S3-compatible server does
        listed = [{"PartNumber": n, "ETag": etag if etag.startswith('"') else f'"{etag}"'} for n, etag in parts]
        with _s3_errors():
            self._client.complete_multipart_upload(Bucket=self._name(account_id, bucket), Key=key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": listed})
        return self.head_object(account_id, bucket, key)

    def abort_multipart_upload(self, account_id: str, bucket: str, key: str, upload_id: str) -> None:
        """Discard the upload and its parts."""
        with _s3_errors():
            self._client.abort_multipart_upload(Bucket=self._name(account_id, bucket), Key=key, UploadId=upload_id)


"""The ObjectStore contract, run against both backends (local directory and a real moto S3 server)."""
from __future__ import annotations

import hashlib
import io
import os

import pytest

from modelkiln.storage import (
    BadDigest, BucketAlreadyOwnedByYou, BucketNotEmpty, EntityTooSmall, InvalidArgument, InvalidBucketName,
    InvalidPart, InvalidPartOrder, InvalidRange, KeyTooLong, LocalObjectStore, NoSuchBucket, NoSuchKey,
    NoSuchUpload, UnsupportedFeature, object_exists,
)

from .conftest import ACCOUNT

MIB = 1024 * 1024
TRICKY_KEYS = ["../../etc/passwd", "/abs", "a//b", "ünïcødé/模型/файл.bin", "a" * 1024, "é" * 512,
               "%2e%2e/%2F", "x/../../y", "..%2f..%2fz", "tab\there", "~", "sp ace+plus"]


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def read_all(store, bucket, key, byte_range=None) -> bytes:
    _, body = store.get_object(ACCOUNT, bucket, key, byte_range)
    with body:
        return body.read()


def all_keys(store, bucket, **kwargs) -> list[str]:
    return [o.key for o in store.list_objects_v2(ACCOUNT, bucket, **kwargs).objects]


def test_roundtrip_binary_with_metadata(store, bucket):
    data = bytes(range(256)) * 4099  # every byte value, not a multiple of the chunk size
    put = store.put_object(ACCOUNT, bucket, "m/model.tar.gz", data, content_type="application/gzip",
                           metadata={"Framework": "ONNX", "x-note": "a b=c"})
    assert put.etag == md5_etag(data) and put.size == len(data)
    head = store.head_object(ACCOUNT, bucket, "m/model.tar.gz")
    assert (head.size, head.etag, head.content_type) == (len(data), md5_etag(data), "application/gzip")
    assert head.metadata == {"framework": "ONNX", "x-note": "a b=c"}
    assert read_all(store, bucket, "m/model.tar.gz") == data
    assert object_exists(store, ACCOUNT, bucket, "m/model.tar.gz")

    store.delete_object(ACCOUNT, bucket, "m/model.tar.gz")
    with pytest.raises(NoSuchKey):
        store.head_object(ACCOUNT, bucket, "m/model.tar.gz")
    with pytest.raises(NoSuchKey):
        store.get_object(ACCOUNT, bucket, "m/model.tar.gz")
    store.delete_object(ACCOUNT, bucket, "m/model.tar.gz")  # deleting a missing key is fine, as in S3
    assert not object_exists(store, ACCOUNT, bucket, "m/model.tar.gz")
    with pytest.raises(InvalidArgument):  # metadata travels as HTTP headers: ASCII only
        store.put_object(ACCOUNT, bucket, "m/other", b"x", metadata={"note": "é"})


@pytest.mark.parametrize("make_body", [bytes, io.BytesIO, lambda d: iter([d[:7], b"", d[7:3000], d[3000:]])],
                         ids=["bytes", "file", "iterator"])
def test_body_kinds_and_overwrite(store, bucket, make_body):
    data = os.urandom(5000)
    store.put_object(ACCOUNT, bucket, "k", b"old content")
    assert store.put_object(ACCOUNT, bucket, "k", make_body(data)).etag == md5_etag(data)
    assert read_all(store, bucket, "k") == data
    assert store.head_object(ACCOUNT, bucket, "k").content_type == "binary/octet-stream"


def test_empty_object(store, bucket):
    assert store.put_object(ACCOUNT, bucket, "empty", b"").etag == md5_etag(b"")
    assert read_all(store, bucket, "empty") == b""
    with pytest.raises(InvalidRange):
        store.get_object(ACCOUNT, bucket, "empty", (0, 0))


def test_range_reads(store, bucket):
    data = bytes(range(100))
    store.put_object(ACCOUNT, bucket, "r", data)
    assert read_all(store, bucket, "r", (0, 9)) == data[:10]
    assert read_all(store, bucket, "r", (10, 10)) == data[10:11]
    assert read_all(store, bucket, "r", (90, None)) == data[90:]
    assert read_all(store, bucket, "r", (None, 5)) == data[-5:]
    assert read_all(store, bucket, "r", (95, 10_000)) == data[95:]  # an end past the object is clamped
    info, body = store.get_object(ACCOUNT, bucket, "r", (20, 29))
    body.close()
    assert info.size == 100  # the whole object's size, for Content-Range
    with pytest.raises(InvalidRange):
        store.get_object(ACCOUNT, bucket, "r", (100, None))
    with pytest.raises(InvalidArgument):
        store.get_object(ACCOUNT, bucket, "r", (9, 3))


def test_checksums_are_verified_and_kept(store, bucket):
    crc32 = "DUoRhQ=="  # CRC32 of b"hello world", base64 of the big-endian value
    store.put_object(ACCOUNT, bucket, "c", b"hello world", checksums={"CRC32": crc32})
    assert store.head_object(ACCOUNT, bucket, "c").checksums.get("CRC32") == crc32
    with pytest.raises(BadDigest):
        store.put_object(ACCOUNT, bucket, "c", b"hello world!", checksums={"CRC32": crc32})
    assert read_all(store, bucket, "c") == b"hello world"
    with pytest.raises(InvalidArgument):  # S3 keeps one checksum per object
        store.put_object(ACCOUNT, bucket, "c2", b"x", checksums={"CRC32": crc32, "SHA256": "AAAA"})
    with pytest.raises(UnsupportedFeature):  # a checksum we cannot verify is refused, not stored unchecked
        store.put_object(ACCOUNT, bucket, "c2", b"x", checksums={"CRC32C": "AAAAAA=="})


def test_tricky_keys_roundtrip_and_list_in_utf8_order(store, bucket):
    for i, key in enumerate(TRICKY_KEYS):
        store.put_object(ACCOUNT, bucket, key, f"{i}".encode())
    for i, key in enumerate(TRICKY_KEYS):
        assert read_all(store, bucket, key) == f"{i}".encode(), key
        assert store.head_object(ACCOUNT, bucket, key).key == key
    assert all_keys(store, bucket) == sorted(TRICKY_KEYS, key=lambda k: k.encode())
    with pytest.raises(KeyTooLong):
        store.put_object(ACCOUNT, bucket, "a" * 1025, b"x")
    with pytest.raises(KeyTooLong):
        store.put_object(ACCOUNT, bucket, "é" * 512 + "a", b"x")


def test_list_prefix_and_delimiter(store, bucket):
    for key in ["a/1", "a/2", "a/b/3", "a-x", "b/1", "c", "d/x/y"]:
        store.put_object(ACCOUNT, bucket, key, b"")
    top = store.list_objects_v2(ACCOUNT, bucket, delimiter="/")
    assert [o.key for o in top.objects] == ["a-x", "c"]
    assert top.common_prefixes == ("a/", "b/", "d/")
    assert top.key_count == 5 and not top.is_truncated
    under_a = store.list_objects_v2(ACCOUNT, bucket, prefix="a/", delimiter="/")
    assert [o.key for o in under_a.objects] == ["a/1", "a/2"] and under_a.common_prefixes == ("a/b/",)
    assert all_keys(store, bucket, prefix="a/") == ["a/1", "a/2", "a/b/3"]
    assert all_keys(store, bucket, start_after="a/2") == ["a/b/3", "b/1", "c", "d/x/y"]  # '-' sorts before '/'
    assert all_keys(store, bucket, prefix="zzz") == []


def paginate(store, bucket, **kwargs) -> tuple[list[str], list[int]]:
    entries, sizes, token = [], [], None
    while True:
        page = store.list_objects_v2(ACCOUNT, bucket, continuation_token=token, **kwargs)
        entries += [o.key for o in page.objects] + list(page.common_prefixes)
        sizes.append(page.key_count)
        if not page.is_truncated:
            return entries, sizes
        token = page.next_continuation_token
        assert token


def test_pagination_continues_exactly(store, bucket):
    keys = [f"k{i:03d}" for i in range(23)] + ["dir/a", "dir/b", "dir2/c"]
    for key in keys:
        store.put_object(ACCOUNT, bucket, key, b"x")
    entries, sizes = paginate(store, bucket, max_keys=2)
    assert entries == sorted(keys)  # in order, none missed, none twice
    assert sizes == [2] * 13
    folded, sizes = paginate(store, bucket, max_keys=1, delimiter="/")
    assert folded == ["dir/", "dir2/"] + [f"k{i:03d}" for i in range(23)]
    assert all(n == 1 for n in sizes)


def parts_etag(*parts: bytes) -> str:
    joined = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(parts)}"'


def test_multipart_upload(store, bucket):
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(1)]
    upload = store.create_multipart_upload(ACCOUNT, bucket, "big.bin", content_type="application/x-tar",
                                           metadata={"stage": "compiled"})
    uploaded = [store.upload_part(ACCOUNT, bucket, "big.bin", upload, n, p) for n, p in enumerate(parts, 1)]
    assert [p.etag for p in uploaded] == [md5_etag(p) for p in parts]
    listed = store.list_parts(ACCOUNT, bucket, "big.bin", upload)
    assert [(p.number, p.size) for p in listed] == [(1, 5 * MIB), (2, 5 * MIB), (3, 1)]
    with pytest.raises(NoSuchKey):
        store.head_object(ACCOUNT, bucket, "big.bin")  # nothing visible before completion

    info = store.complete_multipart_upload(ACCOUNT, bucket, "big.bin", upload, [(p.number, p.etag) for p in uploaded])
    assert info.etag == parts_etag(*parts) and info.etag.endswith('-3"')
    assert info.size == 10 * MIB + 1
    head = store.head_object(ACCOUNT, bucket, "big.bin")
    assert (head.etag, head.content_type, head.metadata) == (info.etag, "application/x-tar", {"stage": "compiled"})
    assert read_all(store, bucket, "big.bin") == b"".join(parts)
    with pytest.raises(NoSuchUpload):
        store.list_parts(ACCOUNT, bucket, "big.bin", upload)


def test_multipart_part_replacement(store, bucket):
    first, second = os.urandom(5 * MIB), os.urandom(10)
    upload = store.create_multipart_upload(ACCOUNT, bucket, "p")
    store.upload_part(ACCOUNT, bucket, "p", upload, 1, os.urandom(5 * MIB))
    p1 = store.upload_part(ACCOUNT, bucket, "p", upload, 1, first)  # same number again: replaces
    p2 = store.upload_part(ACCOUNT, bucket, "p", upload, 2, second)
    assert len(store.list_parts(ACCOUNT, bucket, "p", upload)) == 2
    store.complete_multipart_upload(ACCOUNT, bucket, "p", upload, [(1, p1.etag), (2, p2.etag.strip('"'))])
    assert read_all(store, bucket, "p") == first + second


def test_multipart_rejections(store, bucket):
    upload = store.create_multipart_upload(ACCOUNT, bucket, "small")
    p1 = store.upload_part(ACCOUNT, bucket, "small", upload, 1, b"a" * 1024)
    p2 = store.upload_part(ACCOUNT, bucket, "small", upload, 2, b"b" * 1024)
    with pytest.raises(EntityTooSmall):
        store.complete_multipart_upload(ACCOUNT, bucket, "small", upload, [(1, p1.etag), (2, p2.etag)])
    with pytest.raises(InvalidPart):
        store.complete_multipart_upload(ACCOUNT, bucket, "small", upload, [(1, md5_etag(b"other"))])
    with pytest.raises(InvalidPart):
        store.complete_multipart_upload(ACCOUNT, bucket, "small", upload, [(7, p1.etag)])
    with pytest.raises(InvalidPartOrder):
        store.complete_multipart_upload(ACCOUNT, bucket, "small", upload, [(2, p2.etag), (1, p1.etag)])
    with pytest.raises(InvalidArgument):
        store.upload_part(ACCOUNT, bucket, "small", upload, 10_001, b"x")
    with pytest.raises(NoSuchKey):
        store.head_object(ACCOUNT, bucket, "small")
    # a single part may be small: it is the last one
    store.complete_multipart_upload(ACCOUNT, bucket, "small", upload, [(1, p1.etag)])
    assert read_all(store, bucket, "small") == b"a" * 1024


def test_abort_removes_parts(store, bucket):
    upload = store.create_multipart_upload(ACCOUNT, bucket, "gone")
    part = store.upload_part(ACCOUNT, bucket, "gone", upload, 1, b"data")
    store.abort_multipart_upload(ACCOUNT, bucket, "gone", upload)
    with pytest.raises(NoSuchUpload):
        store.list_parts(ACCOUNT, bucket, "gone", upload)
    if isinstance(store, LocalObjectStore):  # moto answers these with a 500 (a KeyError); AWS with NoSuchUpload
        with pytest.raises(NoSuchUpload):
            store.complete_multipart_upload(ACCOUNT, bucket, "gone", upload, [(1, part.etag)])
        with pytest.raises(NoSuchUpload):
            store.upload_part(ACCOUNT, bucket, "gone", upload, 2, b"more")
    assert all_keys(store, bucket) == []


def test_bucket_lifecycle(store):
    store.create_bucket(ACCOUNT, "one")
    store.create_bucket(ACCOUNT, "two.b-2")
    assert [b.name for b in store.list_buckets(ACCOUNT)] == ["one", "two.b-2"]
    assert store.head_bucket(ACCOUNT, "one").name == "one"
    with pytest.raises(BucketAlreadyOwnedByYou):
        store.create_bucket(ACCOUNT, "one")
    store.put_object(ACCOUNT, "one", "k", b"x")
    with pytest.raises(BucketNotEmpty):
        store.delete_bucket(ACCOUNT, "one")
    store.delete_object(ACCOUNT, "one", "k")
    store.delete_bucket(ACCOUNT, "one")
    with pytest.raises(NoSuchBucket):
        store.head_bucket(ACCOUNT, "one")
    with pytest.raises(NoSuchBucket):
        store.put_object(ACCOUNT, "one", "k", b"x")
    with pytest.raises(NoSuchBucket):
        store.head_object(ACCOUNT, "one", "k")
    with pytest.raises(NoSuchBucket):
        store.list_objects_v2(ACCOUNT, "one")
    assert [b.name for b in store.list_buckets(ACCOUNT)] == ["two.b-2"]


@pytest.mark.parametrize("name", ["ab", "Upper", "under_score", "-lead", "trail-", "a..b", "192.168.1.1",
                                  "x" * 64, "../etc", "a/b", "xn--abc"])
def test_invalid_bucket_names(store, name):
    with pytest.raises(InvalidBucketName):
        store.create_bucket(ACCOUNT, name)
    with pytest.raises(InvalidBucketName):
        store.put_object(ACCOUNT, name, "k", b"x")

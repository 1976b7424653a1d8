"""What only the local store can show: its files stay inside its root, accounts are isolated, and writes
are atomic against readers, crashes and other processes."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from modelkiln.storage import (
    AccessDenied, BucketAlreadyExists, InvalidArgument, LocalObjectStore, NoSuchBucket, NoSuchKey, NoSuchUpload,
    UnsupportedFeature, download_file, open_store, parse_s3_uri, upload_file,
)

from .conftest import ACCOUNT, OTHER
from .test_store import TRICKY_KEYS, all_keys, read_all


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def local(tmp_path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "deep" / "store")
    store.create_bucket(ACCOUNT, "models")
    return store


def test_keys_never_become_paths_outside_the_bucket(tmp_path, local):
    outside_before = files_under(tmp_path) - files_under(local.root)
    for i, key in enumerate(TRICKY_KEYS + ["../../../../../../tmp/kiln-escape", "models/../other/x"]):
        local.put_object(ACCOUNT, "models", key, f"payload {i}".encode())
    bucket_dir = local.root / "buckets" / "models"
    assert files_under(tmp_path) - files_under(local.root) == outside_before == set()
    assert not Path("/tmp/kiln-escape").exists()
    for path in files_under(local.root):
        assert len(path.name.encode()) <= 255
        if "payload" in path.read_bytes().decode(errors="replace"):  # every object's bytes live in its bucket
            assert bucket_dir in path.parents
    assert len(all_keys(local, "models")) == len(TRICKY_KEYS) + 2


def test_accounts_are_isolated(local):
    local.put_object(ACCOUNT, "models", "secret.bin", b"A's model")
    upload = local.create_multipart_upload(ACCOUNT, "models", "mp")
    with pytest.raises(BucketAlreadyExists):
        local.create_bucket(OTHER, "models")
    assert local.list_buckets(OTHER) == []
    attempts = [
        lambda: local.head_bucket(OTHER, "models"),
        lambda: local.list_objects_v2(OTHER, "models"),
        lambda: local.get_object(OTHER, "models", "secret.bin"),
        lambda: local.head_object(OTHER, "models", "secret.bin"),
        lambda: local.put_object(OTHER, "models", "secret.bin", b"B was here"),
        lambda: local.delete_object(OTHER, "models", "secret.bin"),
        lambda: local.delete_bucket(OTHER, "models"),
        lambda: local.create_multipart_upload(OTHER, "models", "x"),
        lambda: local.upload_part(OTHER, "models", "mp", upload, 1, b"x"),
        lambda: local.list_parts(OTHER, "models", "mp", upload),
        lambda: local.abort_multipart_upload(OTHER, "models", "mp", upload),
    ]
    for attempt in attempts:
        with pytest.raises(AccessDenied):
            attempt()
    assert read_all(local, "models", "secret.bin") == b"A's model"
    assert [b.name for b in local.list_buckets(ACCOUNT)] == ["models"]
    assert local.list_parts(ACCOUNT, "models", "mp", upload) == []


def test_kms_is_refused_with_the_fix(local):
    for call in (lambda: local.put_object(ACCOUNT, "models", "k", b"x", sse_kms_key_id="alias/kiln"),
                 lambda: local.create_multipart_upload(ACCOUNT, "models", "k", sse_kms_key_id="alias/kiln")):
        with pytest.raises(UnsupportedFeature) as err:
            call()
        assert (err.value.code, err.value.http_status) == ("NotImplemented", 501)
        assert "S3 backend" in err.value.message and "does not encrypt" in err.value.message
    assert all_keys(local, "models") == []


def test_readers_see_whole_old_or_whole_new_while_a_writer_replaces(tmp_path):
    store = LocalObjectStore(tmp_path / "s", durable=False)  # fsync changes durability, not what readers see
    store.create_bucket(ACCOUNT, "bkt")
    versions = [bytes([c]) * 300_000 for c in b"ab"]
    etags = {f'"{hashlib.md5(v).hexdigest()}"': v for v in versions}
    store.put_object(ACCOUNT, "bkt", "k", versions[0])
    done, bad, reads = threading.Event(), [], [0]

    def writer() -> None:
        for i in range(400):
            store.put_object(ACCOUNT, "bkt", "k", versions[i % 2])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        info, body = store.get_object(ACCOUNT, "bkt", "k")
        with body:
            data = body.read()
        reads[0] += 1
        if etags.get(info.etag) != data:
            bad.append((info.etag, len(data), data[:1], data[-1:]))
    thread.join()
    assert not bad, bad[:3]
    assert reads[0] > 50
    assert len(list((store.root / "buckets" / "bkt" / "data").iterdir())) == 1  # every replaced blob was removed


def test_a_writer_that_fails_mid_stream_leaves_nothing(local):
    local.put_object(ACCOUNT, "models", "kept", b"original")
    before = files_under(local.root)

    def body():
        yield b"x" * 1_000_000
        raise ConnectionResetError("client went away")

    for key in ("new", "kept"):
        with pytest.raises(ConnectionResetError):
            local.put_object(ACCOUNT, "models", key, body())
    upload = local.create_multipart_upload(ACCOUNT, "models", "mp")
    with pytest.raises(ConnectionResetError):
        local.upload_part(ACCOUNT, "models", "mp", upload, 1, body())
    local.abort_multipart_upload(ACCOUNT, "models", "mp", upload)
    assert files_under(local.root) == before
    assert all_keys(local, "models") == ["kept"] and read_all(local, "models", "kept") == b"original"
    with pytest.raises(NoSuchKey):
        local.head_object(ACCOUNT, "models", "new")


CHILD = """
import sys, time
from modelkiln.storage import LocalObjectStore, StorageError
store = LocalObjectStore(sys.argv[1])
mode, arg = sys.argv[2], sys.argv[3]
if mode == "write":
    for _ in range(30):
        store.put_object("acct", "race", "k", arg.encode() * 200_000)
elif mode == "create":
    try:
        store.create_bucket(arg, "contested")
        print("won")
    except StorageError as e:
        print(e.code)
elif mode == "crash":
    def body():
        yield b"partial" * 100_000
        print("streaming", flush=True)
        time.sleep(60)
        yield b"never"
    store.put_object("acct", "race", "k", body())
"""


def child(root: Path, mode: str, arg: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(root), mode, arg], stdout=subprocess.PIPE, text=True)


def test_processes_racing(tmp_path):
    store = LocalObjectStore(tmp_path / "s")
    store.create_bucket("acct", "race")
    store.put_object("acct", "race", "k", b"a" * 200_000)
    writers = [child(store.root, "write", c) for c in "ab"]
    creators = [child(store.root, "create", f"acct{i}") for i in range(4)]
    while any(w.poll() is None for w in writers):  # read while the two processes overwrite each other
        data = read_all_as("acct", store)
        assert data in (b"a" * 200_000, b"b" * 200_000)
    assert [w.returncode for w in writers] == [0, 0]
    outcomes = sorted(c.communicate()[0].strip() for c in creators)
    assert outcomes == ["BucketAlreadyExists"] * 3 + ["won"]
    bucket = store.root / "buckets" / "race"
    assert len(list((bucket / "data").iterdir())) == 1 and not list((bucket / "tmp").iterdir())


def read_all_as(account: str, store: LocalObjectStore) -> bytes:
    _, body = store.get_object(account, "race", "k")
    with body:
        return body.read()


def test_a_crash_mid_write_leaves_the_old_object(tmp_path):
    store = LocalObjectStore(tmp_path / "s")
    store.create_bucket("acct", "race")
    store.put_object("acct", "race", "k", b"old")
    proc = child(store.root, "crash", "")
    assert proc.stdout.readline().strip() == "streaming"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_all_as("acct", store) == b"old"
    assert [o.key for o in store.list_objects_v2("acct", "race").objects] == ["k"]


def test_continuation_tokens_cannot_be_forged_or_moved(local):
    local.create_bucket(ACCOUNT, "other")
    for i in range(5):
        local.put_object(ACCOUNT, "models", f"k{i}", b"x")
        local.put_object(ACCOUNT, "other", f"k{i}", b"x")
    token = local.list_objects_v2(ACCOUNT, "models", max_keys=2).next_continuation_token
    assert token and "k1" not in token
    assert all_keys(local, "models", max_keys=2, continuation_token=token) == ["k2", "k3"]
    body, mac = token.rsplit(".", 1)
    forged = [f"{body[:-2]}AA.{mac}", "../../etc/passwd", "", f"{body}.{'0' * len(mac)}", "é.é"]
    for bad in forged[:2] + forged[3:]:
        with pytest.raises(InvalidArgument):
            local.list_objects_v2(ACCOUNT, "models", continuation_token=bad)
    for wrong_scope in ({"bucket": "other"}, {"bucket": "models", "prefix": "k"}):
        with pytest.raises(InvalidArgument):  # a token only continues the listing it came from
            local.list_objects_v2(ACCOUNT, max_keys=2, continuation_token=token, **wrong_scope)
    assert LocalObjectStore(local.root).list_objects_v2(ACCOUNT, "models", continuation_token=token).key_count == 3


def test_listing_thousands_of_keys(tmp_path):
    store = LocalObjectStore(tmp_path / "s", durable=False)
    store.create_bucket(ACCOUNT, "many")
    keys = [f"model-{i:05d}/{'x' * (i % 250)}" for i in range(2500)]  # some too long to encode in a file name
    for key in keys:
        store.put_object(ACCOUNT, "many", key, b"")
    seen, token = [], None
    while True:
        page = store.list_objects_v2(ACCOUNT, "many", continuation_token=token)
        seen += [o.key for o in page.objects]
        if not page.is_truncated:
            break
        token = page.next_continuation_token
    assert seen == sorted(keys)
    assert store.list_objects_v2(ACCOUNT, "many", delimiter="/").common_prefixes[-1] == "model-00999/"


def test_delete_bucket_takes_pending_uploads(local):
    upload = local.create_multipart_upload(ACCOUNT, "models", "mp")
    local.upload_part(ACCOUNT, "models", "mp", upload, 1, b"part")
    local.delete_bucket(ACCOUNT, "models")
    local.create_bucket(ACCOUNT, "models")
    with pytest.raises(NoSuchUpload):
        local.list_parts(ACCOUNT, "models", "mp", upload)
    with pytest.raises(NoSuchUpload):
        local.list_parts(ACCOUNT, "models", "mp", "../../../etc")
    assert files_under(local.root / "tmp") == set()


def test_open_store_and_transfer_helpers(tmp_path):
    for url in (str(tmp_path / "a"), f"file://{tmp_path / 'b'}"):
        assert isinstance(open_store(url), LocalObjectStore)
    assert (tmp_path / "b" / "buckets").is_dir()
    for url in ("ftp://host/x", "s3://bucket-name/key"):
        with pytest.raises(InvalidArgument):
            open_store(url)

    store = open_store(str(tmp_path / "a"))
    store.create_bucket(ACCOUNT, "jobs")
    uri = parse_s3_uri("s3://jobs/output/")
    assert (uri.bucket, uri.key, str(uri.join("model.tar.gz"))) == ("jobs", "output/", "s3://jobs/output/model.tar.gz")
    source = tmp_path / "model.tar.gz"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    target = uri.join("model.tar.gz")
    upload_file(store, ACCOUNT, source, target.bucket, target.key, content_type="application/gzip")
    download_file(store, ACCOUNT, target.bucket, target.key, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()
    with pytest.raises(NoSuchKey):
        download_file(store, ACCOUNT, "jobs", "missing", tmp_path / "never")
    with pytest.raises(NoSuchBucket):
        download_file(store, ACCOUNT, "nojobs", "missing", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(InvalidArgument):
        parse_s3_uri("https://jobs/output")

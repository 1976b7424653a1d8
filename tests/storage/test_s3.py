"""What only the S3 backend does, against a real moto S3 server: KMS parameters, bucket prefixes, account
slices, URLs, and error translation."""
from __future__ import annotations

import socket

import boto3
import pytest

from modelkiln.storage import NoSuchBucket, NoSuchKey, StorageError, open_store
from modelkiln.storage.s3 import S3ObjectStore

from .conftest import ACCOUNT, OTHER, s3_store


def raw_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def test_kms_key_is_passed_to_s3(moto_endpoint):
    store = s3_store(moto_endpoint)
    store.create_bucket(ACCOUNT, "secure")
    key_id = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    put = store.put_object(ACCOUNT, "secure", "model", b"weights", sse_kms_key_id=key_id)
    assert put.sse == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_id}
    assert store.head_object(ACCOUNT, "secure", "model").sse == put.sse
    upload = store.create_multipart_upload(ACCOUNT, "secure", "big", sse_kms_key_id=key_id)
    part = store.upload_part(ACCOUNT, "secure", "big", upload, 1, b"tail")
    done = store.complete_multipart_upload(ACCOUNT, "secure", "big", upload, [(1, part.etag)])
    assert done.sse == put.sse


def test_bucket_prefix_maps_names(moto_endpoint):
    ours = S3ObjectStore(moto_endpoint, "us-east-1", "testing", "testing", bucket_prefix="kiln-a-")
    theirs = S3ObjectStore(moto_endpoint, "us-east-1", "testing", "testing", bucket_prefix="kiln-b-")
    ours.create_bucket(ACCOUNT, "models")
    ours.put_object(ACCOUNT, "models", "k", b"v")
    physical = {b["Name"] for b in raw_client(moto_endpoint).list_buckets()["Buckets"]}
    assert "kiln-a-models" in physical and "models" not in physical
    assert [b.name for b in ours.list_buckets(ACCOUNT)] == ["models"]
    assert theirs.list_buckets(ACCOUNT) == []
    with pytest.raises(NoSuchBucket):
        theirs.head_object(ACCOUNT, "models", "k")


def test_separate_accounts_get_separate_buckets(moto_endpoint):
    store = S3ObjectStore(moto_endpoint, "us-east-1", "testing", "testing", bucket_prefix="sep-",
                          separate_accounts=True)
    store.create_bucket(ACCOUNT, "models")
    store.put_object(ACCOUNT, "models", "k", b"mine")
    assert f"sep-{ACCOUNT}-models" in {b["Name"] for b in raw_client(moto_endpoint).list_buckets()["Buckets"]}
    assert store.list_buckets(OTHER) == []
    with pytest.raises(NoSuchBucket):
        store.get_object(OTHER, "models", "k")
    store.create_bucket(OTHER, "models")  # the same name is free in another account
    assert [b.name for b in store.list_buckets(OTHER)] == ["models"]
    assert store.get_object(ACCOUNT, "models", "k")[1].read() == b"mine"


def test_open_store_url_reaches_the_endpoint(moto_endpoint):
    base = moto_endpoint.replace('http://', 'http://testing:testing@')
    store = open_store(f"{base}/?region=us-east-1&prefix=url-&accounts=shared")
    assert isinstance(store, S3ObjectStore) and store.bucket_prefix == "url-" and not store.separate_accounts
    store.create_bucket(ACCOUNT, "via-url")
    store.put_object(ACCOUNT, "via-url", "k", b"through the url")
    assert raw_client(moto_endpoint).get_object(Bucket="url-via-url", Key="k")["Body"].read() == b"through the url"
    assert open_store(f"{base}/?prefix=url-").separate_accounts  # the default keeps Kiln accounts apart
    with pytest.raises(StorageError, match="accounts=mixed"):
        open_store(f"{base}/?accounts=mixed")


def test_head_tells_missing_bucket_from_missing_key(moto_endpoint):
    store = s3_store(moto_endpoint)
    with pytest.raises(NoSuchBucket):
        store.head_object(ACCOUNT, "absent", "k")
    store.create_bucket(ACCOUNT, "present")
    with pytest.raises(NoSuchKey):
        store.head_object(ACCOUNT, "present", "k")


def test_unreachable_endpoint_is_a_storage_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    store = S3ObjectStore(f"http://127.0.0.1:{port}", "us-east-1", "x", "y")
    with pytest.raises(StorageError) as err:
        store.list_buckets(ACCOUNT)
    assert (err.value.code, err.value.http_status) == ("ServiceUnavailable", 503)

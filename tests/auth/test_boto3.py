"""The exact bytes boto3 sends (recorded by a local server) pass the verifier, and one flipped byte fails it."""
from __future__ import annotations

import dataclasses
import os

import boto3
import pytest
from botocore.config import Config

from modelkiln.auth import AccountStore, AuthError, Credentials, authenticate, body_decoder, read_body

from .recorder import Recorded, Recorder, self_signed_cert

REGION = "eu-west-3"


@pytest.fixture(autouse=True)
def no_aws_config(monkeypatch, tmp_path):
    """Keep a developer's ~/.aws and AWS_* settings from changing what boto3 sends."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def store(tmp_path) -> AccountStore:
    return AccountStore(tmp_path / "keys.json")


def client(service: str, url: str, creds: Credentials, verify: str | None = None):
    return boto3.client(
        service, endpoint_url=url, region_name=REGION, verify=verify,
        aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def verify_streamed(recorded: Recorded, lookup) -> tuple[bytes, dict[str, str]]:
    """As a server that streams the body: authenticate the head, then check the body piece by piece."""
    verified = authenticate(recorded.request(with_body=False), lookup, services={"s3"})
    decoder = body_decoder(verified, recorded.request().headers)
    pieces = (recorded.body[i:i + 65536] for i in range(0, len(recorded.body), 65536))
    return b"".join(read_body(decoder, pieces)), decoder.finish()


def flip(recorded: Recorded, at: int) -> Recorded:
    body = bytearray(recorded.body)
    body[at] ^= 0x01
    return dataclasses.replace(recorded, body=bytes(body))


def test_boto3_sagemaker_call(store):
    creds = store.create_account()
    with Recorder() as server:
        reply = client("sagemaker", server.url, creds).list_compilation_jobs(MaxResults=5, SortBy="Name")
    assert reply["CompilationJobSummaries"] == []
    [recorded] = server.recorded
    assert "x-amz-content-sha256" not in dict((k.lower(), v) for k, v in recorded.headers)  # server hashes body
    principal = authenticate(recorded.request(), store.lookup, services={"sagemaker"}).principal
    assert principal == type(principal)(creds.account_id, creds.access_key_id, REGION, "sagemaker")
    with pytest.raises(AuthError) as caught:
        authenticate(flip(recorded, 5).request(), store.lookup, services={"sagemaker"})
    assert caught.value.kind == "bad_signature"
    assert caught.value.json().code == "InvalidSignatureException"


def test_boto3_put_object_over_http_signs_the_payload_hash(store):
    creds = store.create_account()
    data = os.urandom(300_000)
    with Recorder() as server:
        client("s3", server.url, creds).put_object(Bucket="models", Key="in/model v1.tar.gz", Body=data)
    [recorded] = server.recorded
    assert recorded.path == "/models/in/model%20v1.tar.gz"
    payload, trailers = verify_streamed(recorded, store.lookup)
    assert payload == data and trailers == {}
    with pytest.raises(AuthError) as caught:
        verify_streamed(flip(recorded, 123_456), store.lookup)
    assert caught.value.kind == "bad_digest"


def test_boto3_uploads_over_https_are_aws_chunked_with_a_crc32_trailer(store, tls_cert):
    creds = store.create_account()
    data = os.urandom(2 * 1024 * 1024 + 4321)  # botocore frames 1 MiB chunks: three of them here
    with Recorder(tls_cert) as server:
        s3 = client("s3", server.url, creds, verify=str(tls_cert))
        s3.put_object(Bucket="models", Key="model.tar.gz", Body=data)
        s3.upload_part(Bucket="models", Key="big.tar.gz", UploadId="u-1", PartNumber=2, Body=data[:700_000])
    put, part = server.recorded
    assert part.query == "uploadId=u-1&partNumber=2"  # unsorted on the wire: the canonical form sorts it
    for recorded, expected in ((put, data), (part, data[:700_000])):
        headers = recorded.request().headers
        assert headers.get("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        assert headers.get("content-encoding") == "aws-chunked"
        payload, trailers = verify_streamed(recorded, store.lookup)
        assert payload == expected
        assert set(trailers) == {"x-amz-checksum-crc32"}
        with pytest.raises(AuthError) as caught:  # unsigned chunks: the crc32 trailer catches it
            verify_streamed(flip(recorded, recorded.body.index(expected[500_000:500_064]) + 7), store.lookup)
        assert caught.value.kind == "bad_digest" and caught.value.s3().code == "BadDigest"

"""SigV4 verification of requests signed by botocore's own signers, and what a forgery or a slip gets."""
from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from modelkiln.auth import AccountStore, AuthError, Credentials, HttpRequest, authenticate

JSON_HEADERS = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.ListCompilationJobs"}


@pytest.fixture
def store(tmp_path) -> AccountStore:
    return AccountStore(tmp_path / "keys.json")


@pytest.fixture
def creds(store) -> Credentials:
    return store.create_account()


def boto(creds: Credentials) -> BotoCredentials:
    return BotoCredentials(creds.access_key_id, creds.secret_access_key)


def received(signed: AWSRequest) -> HttpRequest:
    """What the server gets on the wire: http.client adds Host from the URL, as it does for botocore."""
    prepared = signed.prepare()
    url = urlsplit(prepared.url)
    headers = [("Host", url.netloc), *prepared.headers.items()]
    return HttpRequest(prepared.method, url.path, url.query, headers, prepared.body or b"")


def sagemaker_request(creds: Credentials, body: bytes = b"{}", region: str = "eu-west-3") -> AWSRequest:
    request = AWSRequest("POST", "http://localhost:8080/", data=body, headers=dict(JSON_HEADERS))
    SigV4Auth(boto(creds), "sagemaker", region).add_auth(request)
    return request


def s3_put(creds: Credentials, url: str = "http://localhost:8080/bucket/dir/a%20key%2B~.tar.gz",
           body: bytes = b"model bytes", unsigned: bool = False) -> AWSRequest:
    request = AWSRequest("PUT", url, data=body, headers={"Content-Type": "application/octet-stream"})
    if unsigned:  # as a client made with Config(s3={"payload_signing_enabled": False}) signs
        request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(boto(creds), "s3", "eu-west-3").add_auth(request)
    return request


def presigned(creds: Credentials, method: str = "GET", expires: int = 300) -> AWSRequest:
    request = AWSRequest(method, "http://localhost:8080/bucket/out/model.tar.gz?versionId=null")
    S3SigV4QueryAuth(boto(creds), "s3", "eu-west-3", expires=expires).add_auth(request)
    return request


def kind_of(request: HttpRequest, lookup, **kwargs) -> str:
    with pytest.raises(AuthError) as caught:
        authenticate(request, lookup, **kwargs)
    return caught.value.kind


def test_sagemaker_json_request_is_accepted_with_its_principal(store, creds):
    verified = authenticate(received(sagemaker_request(creds, region="local-1")), store.lookup)
    p = verified.principal
    assert (p.account_id, p.access_key_id, p.region, p.service) == (
        creds.account_id, creds.access_key_id, "local-1", "sagemaker")


def test_s3_put_with_hex_payload_hash_and_with_unsigned_payload(store, creds):
    for unsigned, expected in ((False, None), (True, "UNSIGNED-PAYLOAD")):
        request = received(s3_put(creds, unsigned=unsigned))
        verified = authenticate(request, store.lookup)
        assert verified.principal.service == "s3" and verified.principal.region == "eu-west-3"
        assert verified.payload_hash == (expected or request.headers.get("x-amz-content-sha256"))


def test_presigned_get_and_put_are_accepted(store, creds):
    for method in ("GET", "PUT"):
        verified = authenticate(received(presigned(creds, method)), store.lookup)
        assert verified.principal.access_key_id == creds.access_key_id
        assert verified.payload_hash == "UNSIGNED-PAYLOAD"


def test_server_canonical_request_is_the_clients(store, creds, caplog):
    """Signed with a wrong secret, the error shows our canonical request: it must equal the one botocore
    logged while signing."""
    forger = Credentials(creds.account_id, creds.access_key_id, "x" * 40)
    for make in (sagemaker_request, s3_put):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="botocore.auth"):
            signed = make(forger)
        client_canonical = next(r.args[0] for r in caplog.records if r.msg.startswith("CanonicalRequest"))
        with pytest.raises(AuthError) as caught:
            authenticate(received(signed), store.lookup)
        error = caught.value
        assert error.kind == "bad_signature"
        # botocore signs the Host it will send (from the URL); we sign the Host field we received
        assert error.canonical_request == client_canonical
        good_signature = make(creds).headers["Authorization"].rsplit("Signature=", 1)[1]
        for text in (str(error), error.message, error.canonical_request, error.string_to_sign):
            assert creds.secret_access_key not in text and good_signature not in text


def _replace(request: HttpRequest, **changes) -> HttpRequest:
    return dataclasses.replace(request, **changes)


def _with_header(request: HttpRequest, name: str, value: str) -> HttpRequest:
    kept = [(k, v) for k, v in request.headers if k != name.lower()]
    return _replace(request, headers=[*kept, (name, value)])


def test_tampering_is_caught(store, creds):
    json_request = received(sagemaker_request(creds))
    s3_request = received(s3_put(creds))
    get_url = received(presigned(creds))
    assert kind_of(_replace(json_request, body=b'{"MaxResults": 1}'), store.lookup) == "bad_signature"
    assert kind_of(_with_header(json_request, "X-Amz-Target", "SageMaker.DeleteCompilationJob"),
                   store.lookup) == "bad_signature"
    assert kind_of(_replace(json_request, method="PUT"), store.lookup) == "bad_signature"
    assert kind_of(_replace(s3_request, path="/bucket/dir/other.tar.gz"), store.lookup) == "bad_signature"
    assert kind_of(_replace(s3_request, query="acl"), store.lookup) == "bad_signature"
    assert kind_of(_with_header(s3_request, "Content-Type", "text/plain"), store.lookup) == "bad_signature"
    # The body of an S3 PUT is bound by its signed x-amz-content-sha256, which it no longer matches.
    assert kind_of(_replace(s3_request, body=b"model bytez"), store.lookup) == "bad_digest"
    assert kind_of(_replace(get_url, path="/bucket/out/other.tar.gz"), store.lookup) == "bad_signature"
    assert kind_of(_replace(get_url, query=get_url.query.replace("versionId=null", "versionId=7")),
                   store.lookup) == "bad_signature"
    assert kind_of(_replace(get_url, query=get_url.query.replace("X-Amz-Expires=300", "X-Amz-Expires=900")),
                   store.lookup) == "bad_signature"
    # An x-amz-* field added after signing is refused even though the signature itself still holds.
    assert kind_of(_with_header(s3_request, "x-amz-meta-owner", "mallory"), store.lookup) == "bad_signature"
    assert authenticate(_with_header(s3_request, "User-Agent", "curl"), store.lookup)  # not signed, not x-amz


def test_unknown_revoked_and_missing(store, creds):
    stranger = Credentials("111111111111", "AKIAZZZZZZZZZZZZZZZZ", "y" * 40)
    assert kind_of(received(sagemaker_request(stranger)), store.lookup) == "unknown_key"
    request = received(sagemaker_request(creds))
    store.revoke(creds.access_key_id)
    assert kind_of(request, store.lookup) == "unknown_key"
    bare = HttpRequest("POST", "/", "", [("Host", "localhost"), *JSON_HEADERS.items()], b"{}")
    assert kind_of(bare, store.lookup) == "missing"


def test_clock_skew_and_expiry(store, creds):
    now = datetime.now(timezone.utc)
    request = received(sagemaker_request(creds))
    assert authenticate(request, store.lookup, now=now + timedelta(minutes=14))
    assert kind_of(request, store.lookup, now=now + timedelta(minutes=16)) == "skew"  # an old x-amz-date
    assert kind_of(request, store.lookup, now=now - timedelta(minutes=16)) == "skew"  # one from the future
    url = received(presigned(creds, expires=60))
    assert authenticate(url, store.lookup, now=now + timedelta(seconds=50))
    assert kind_of(url, store.lookup, now=now + timedelta(seconds=65)) == "expired"
    assert kind_of(url, store.lookup, now=now - timedelta(minutes=20)) == "skew"  # not valid yet


def _authorization(request: HttpRequest, **parts: str) -> HttpRequest:
    value = request.headers.get("authorization")
    for old, new in parts.items():
        assert old in value
        value = value.replace(old, new)
    return _with_header(request, "Authorization", value)


def test_malformed_authorization_is_rejected_strictly(store, creds):
    request = received(sagemaker_request(creds))
    akid = creds.access_key_id
    date = request.headers.get("x-amz-date")[:8]
    day_before = (datetime.strptime(date, "%Y%m%d") - timedelta(days=1)).strftime("%Y%m%d")
    cases = {
        "credential twice": {", SignedHeaders": f", Credential={akid}/{date}/eu-west-3/sagemaker/aws4_request, "
                                                "SignedHeaders"},
        "short scope": {"/aws4_request": ""},
        "wrong terminator": {"/aws4_request": "/aws5_request"},
        "scope date is not x-amz-date": {f"/{date}/": f"/{day_before}/"},
        "no host signed": {"content-type;host;": "content-type;"},
        "unsorted": {"content-type;host": "host;content-type"},
        "upper-case signature": {"Signature=": "Signature=A"},
        "bad region": {"/eu-west-3/": "/eu_west!3/"},
        "other service": {"/sagemaker/": "/iam/"},
        "sigv2": {"AWS4-HMAC-SHA256 ": "AWS "},
        "unknown component": {", Signature=": ", Foo=1, Signature="},
    }
    for name, change in cases.items():
        assert kind_of(_authorization(request, **change), store.lookup) == "malformed", name
    assert kind_of(request, store.lookup, services={"s3"}) == "malformed"  # a SageMaker signature at S3
    both = _replace(received(presigned(creds)), headers=list(request.headers))
    assert kind_of(both, store.lookup) == "malformed"
    assert kind_of(_with_header(request, "X-Amz-Security-Token", "t"), store.lookup) == "unknown_key"
    assert kind_of(_replace(request, path="/#x"), store.lookup) == "malformed"


def test_streamed_body_needs_a_declared_hash(store, creds):
    assert kind_of(_replace(received(sagemaker_request(creds)), body=None), store.lookup) == "malformed"
    assert authenticate(_replace(received(s3_put(creds)), body=None), store.lookup)  # checked as it streams


def test_error_tables_map_every_kind():
    from typing import get_args

    from modelkiln.auth import JSON_ERRORS, S3_ERRORS
    from modelkiln.auth.errors import Kind

    assert set(JSON_ERRORS) == set(S3_ERRORS) == set(get_args(Kind))
    assert AuthError("missing", "m").json().http_status == 403
    assert AuthError("unknown_key", "m").json().code == "UnrecognizedClientException"
    assert AuthError("bad_signature", "m").json().code == "InvalidSignatureException"
    assert AuthError("skew", "m").s3().code == "RequestTimeTooSkewed"
    assert AuthError("malformed", "m").s3().http_status == 400
    assert all(status < 500 for _, status in [*JSON_ERRORS.values(), *S3_ERRORS.values()])  # botocore retries 5xx


def test_date_header_can_carry_the_request_time(store, creds):
    """botocore signs with the Date field instead of X-Amz-Date when the request already has one."""
    request = AWSRequest("GET", "http://localhost:8080/bucket/k", headers={"Date": "Thu, 01 Jan 1970 00:00:00 GMT"})
    S3SigV4Auth(boto(creds), "s3", "eu-west-3").add_auth(request)
    assert "X-Amz-Date" not in request.headers
    assert authenticate(received(request), store.lookup).principal.access_key_id == creds.access_key_id
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert kind_of(received(request), store.lookup, now=later) == "skew"
    moved = _with_header(received(request), "Date", "Thu, 01 Jan 1970 00:00:00 GMT")
    assert kind_of(moved, store.lookup) == "malformed"  # the credential scope's date no longer matches


def test_sagemaker_bodies_must_be_signed(store, creds):
    """Only S3 may leave a body unsigned: an awsJson body is the request itself, and could be swapped."""
    for mode in ("UNSIGNED-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"):
        request = AWSRequest("POST", "http://localhost:8080/", data=b'{"MaxResults": 1}',
                             headers={**JSON_HEADERS, "X-Amz-Content-SHA256": mode})
        SigV4Auth(boto(creds), "sagemaker", "eu-west-3").add_auth(request)
        with pytest.raises(AuthError) as err:
            authenticate(received(request), store.lookup)
        assert err.value.kind == "malformed" and "must sign their body" in err.value.message
    query = AWSRequest("POST", "http://localhost:8080/", data=b"{}", headers=dict(JSON_HEADERS))
    SigV4QueryAuth(boto(creds), "sagemaker", "eu-west-3", expires=300).add_auth(query)
    with pytest.raises(AuthError) as err:
        authenticate(received(query), store.lookup)
    assert err.value.kind == "malformed" and "a presigned URL leaves it unsigned" in err.value.message

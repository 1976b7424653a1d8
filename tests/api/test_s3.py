"""The embedded S3 endpoint, end to end: real boto3 clients and real `aws` CLI processes against `kiln serve`."""
from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError

from modelkiln.auth import Credentials
from tests.api.kiln_server import Account
from tests.auth.test_chunked import crc32_b64, signed_upload

AWS = str(Path(sys.executable).with_name("aws"))
MB = 1024 * 1024


def error_of(call, *args, **kwargs) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a call that must fail."""
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def s3(s3_server):
    return s3_server.client()


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    s3.create_bucket(Bucket="s3-tests")
    return "s3-tests"


def test_bucket_lifecycle(s3):
    created = s3.create_bucket(Bucket="life-cycle")
    assert created["Location"] == "/life-cycle"
    assert "life-cycle" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.head_bucket(Bucket="life-cycle")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket="life-cycle")["LocationConstraint"] is None  # us-east-1
    assert error_of(s3.create_bucket, Bucket="life-cycle") == ("BucketAlreadyOwnedByYou", 409)
    s3.put_object(Bucket="life-cycle", Key="k", Body=b"x")
    assert error_of(s3.delete_bucket, Bucket="life-cycle") == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket="life-cycle", Key="k")
    assert s3.delete_bucket(Bucket="life-cycle")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert error_of(s3.head_bucket, Bucket="life-cycle") == ("404", 404)  # HEAD errors carry no body
    assert "life-cycle" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert error_of(s3.create_bucket, Bucket="Bad_Name") == ("InvalidBucketName", 400)


def test_object_roundtrip_with_metadata(s3, bucket):
    body = os.urandom(3000)
    put = s3.put_object(Bucket=bucket, Key="dir/obj one.bin", Body=body, ContentType="application/x-test",
                        Metadata={"Origin": "unit", "n": "1"})
    md5 = hashlib.md5(body).hexdigest()
    assert put["ETag"] == f'"{md5}"'
    got = s3.get_object(Bucket=bucket, Key="dir/obj one.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "application/x-test"
    assert got["ContentLength"] == 3000
    assert got["Metadata"] == {"origin": "unit", "n": "1"}
    assert got["ETag"] == f'"{md5}"'
    assert isinstance(got["LastModified"], datetime)
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    head = s3.head_object(Bucket=bucket, Key="dir/obj one.bin")
    assert (head["ContentLength"], head["ContentType"], head["Metadata"]["origin"]) == (3000, "application/x-test",
                                                                                     "unit")
    assert s3.delete_object(Bucket=bucket, Key="dir/obj one.bin")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert error_of(s3.get_object, Bucket=bucket, Key="dir/obj one.bin") == ("NoSuchKey", 404)
    assert error_of(s3.head_object, Bucket=bucket, Key="dir/obj one.bin") == ("404", 404)
    s3.delete_object(Bucket=bucket, Key="never-was")  # deleting a missing key succeeds, as in S3


def test_range_get(s3, bucket):
    body = bytes(range(256)) * 4
    s3.put_object(Bucket=bucket, Key="ranged", Body=body)
    part = s3.get_object(Bucket=bucket, Key="ranged", Range="bytes=10-19")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == "bytes 10-19/1024"
    assert part["Body"].read() == body[10:20]
    assert s3.get_object(Bucket=bucket, Key="ranged", Range="bytes=-5")["Body"].read() == body[-5:]
    assert s3.get_object(Bucket=bucket, Key="ranged", Range="bytes=1000-")["Body"].read() == body[1000:]
    assert error_of(s3.get_object, Bucket=bucket, Key="ranged", Range="bytes=5000-") == ("InvalidRange", 416)


def test_checksums_are_checked_stored_and_echoed(s3, bucket):
    body = b"checksummed " * 100
    crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    put = s3.put_object(Bucket=bucket, Key="crc", Body=body)  # boto3 sends CRC32 by default
    assert put["ChecksumCRC32"] == crc
    got = s3.get_object(Bucket=bucket, Key="crc", ChecksumMode="ENABLED")  # botocore validates it, too
    assert (got["ChecksumCRC32"], got["Body"].read()) == (crc, body)
    sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert s3.put_object(Bucket=bucket, Key="sha", Body=body, ChecksumAlgorithm="SHA256")["ChecksumSHA256"] == sha
    wrong_crc = base64.b64encode(b"\0\0\0\0").decode()
    assert error_of(s3.put_object, Bucket=bucket, Key="bad-crc", Body=body, ChecksumCRC32=wrong_crc)[0] == "BadDigest"
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert error_of(s3.put_object, Bucket=bucket, Key="bad-md5", Body=body, ContentMD5=wrong_md5) == ("BadDigest", 400)
    for key in ("bad-crc", "bad-md5"):
        assert error_of(s3.head_object, Bucket=bucket, Key=key)[1] == 404


def send_raw(endpoint: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
    """One request exactly as given (Host included), for bodies botocore never sends over plain HTTP."""
    conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in [*headers, ("Content-Length", str(len(body)))]:
        conn.putheader(name, value)
    conn.endheaders(body)
    response = conn.getresponse()
    status, data = response.status, response.read()
    conn.close()
    return status, data


def test_aws_chunked_signed_upload_with_crc32_trailer(s3_server, s3):
    """The Java/Go SDKs' streaming upload: signed chunks and a signed CRC32 trailer, decoded as it streams."""
    s3.create_bucket(Bucket="bucket")  # the name signed_upload signs for
    first = s3_server.first
    pieces = [os.urandom(65536), os.urandom(70000), b"end"]
    data = b"".join(pieces)
    request, body = signed_upload(Credentials(first.account_id, first.access_key_id, first.secret_access_key),
                                  pieces, crc32=crc32_b64(data))
    status, answer = send_raw(s3_server.endpoint, "PUT", request.path, list(request.headers), body)
    assert status == 200, answer
    got = s3.get_object(Bucket="bucket", Key="model.tar.gz", ChecksumMode="ENABLED")
    assert (got["Body"].read(), got["ChecksumCRC32"]) == (data, crc32_b64(data))
    s3.delete_object(Bucket="bucket", Key="model.tar.gz")
    tampered = body.replace(pieces[1][:16], bytes(16), 1)
    status, answer = send_raw(s3_server.endpoint, "PUT", request.path, list(request.headers), tampered)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer
    assert error_of(s3.head_object, Bucket="bucket", Key="model.tar.gz")[1] == 404


def test_multipart_upload_file_and_download(s3, bucket, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MB))
    config = TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    s3.upload_file(str(source), bucket, "big/file.bin", Config=config)
    head = s3.head_object(Bucket=bucket, Key="big/file.bin")
    assert head["ContentLength"] == 12 * MB
    assert head["ETag"].endswith('-3"')  # S3's multipart ETag: 5 + 5 + 2 MB
    target = tmp_path / "back.bin"
    s3.download_file(bucket, "big/file.bin", str(target), Config=config)  # ranged GETs in parallel
    assert target.read_bytes() == source.read_bytes()


def test_multipart_low_level_list_parts_and_abort(s3, bucket):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mpu", ContentType="text/plain")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mpu", UploadId=upload, PartNumber=1, Body=b"a" * 5 * MB)["ETag"]
    s3.upload_part(Bucket=bucket, Key="mpu", UploadId=upload, PartNumber=2, Body=b"tail")
    parts = s3.list_parts(Bucket=bucket, Key="mpu", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MB), (2, 4)]
    assert parts[0]["ETag"] == etag
    bad = {"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]}
    assert error_of(s3.complete_multipart_upload, Bucket=bucket, Key="mpu", UploadId=upload,
                    MultipartUpload=bad) == ("InvalidPart", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="mpu", UploadId=upload)
    assert error_of(s3.list_parts, Bucket=bucket, Key="mpu", UploadId=upload) == ("NoSuchUpload", 404)
    assert error_of(s3.head_object, Bucket=bucket, Key="mpu")[1] == 404


def test_list_objects_v2_delimiter_prefix_and_pagination(s3):
    s3.create_bucket(Bucket="listing")
    keys = ["a/1", "a/2", "b/x/1", "c", "d e+f", "z"]
    for key in keys:
        s3.put_object(Bucket="listing", Key=key, Body=key.encode())
    top = s3.list_objects_v2(Bucket="listing", Delimiter="/")  # boto3 asks for encoding-type=url and decodes
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/"]
    assert [o["Key"] for o in top["Contents"]] == ["c", "d e+f", "z"]
    assert (top["KeyCount"], top["IsTruncated"]) == (5, False)
    under_a = s3.list_objects_v2(Bucket="listing", Prefix="a/")
    assert [(o["Key"], o["Size"]) for o in under_a["Contents"]] == [("a/1", 3), ("a/2", 3)]
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="listing", PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3 and pages[0]["IsTruncated"] and "NextContinuationToken" in pages[0]
    assert [o["Key"] for page in pages for o in page["Contents"]] == keys
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="listing", StartAfter="c")["Contents"]] == ["d e+f", "z"]
    v1 = list(s3.get_paginator("list_objects").paginate(Bucket="listing", Delimiter="/",
                                                        PaginationConfig={"PageSize": 1}))
    assert [p["Prefix"] for page in v1 for p in page.get("CommonPrefixes", [])] == ["a/", "b/"]
    assert [o["Key"] for page in v1 for o in page.get("Contents", [])] == ["c", "d e+f", "z"]
    deleted = s3.delete_objects(Bucket="listing", Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in deleted["Deleted"]) == sorted(keys)
    assert s3.list_objects_v2(Bucket="listing")["KeyCount"] == 0


def test_copy_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="orig", Body=b"copy me", ContentType="text/plain", Metadata={"a": "1"})
    copied = s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "orig"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"copy me").hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="copy")
    assert (got["Body"].read(), got["ContentType"], got["Metadata"]) == (b"copy me", "text/plain", {"a": "1"})
    s3.copy_object(Bucket=bucket, Key="copy", CopySource=f"{bucket}/orig", MetadataDirective="REPLACE",
                   Metadata={"b": "2"}, ContentType="text/csv")
    assert s3.head_object(Bucket=bucket, Key="copy")["Metadata"] == {"b": "2"}
    assert error_of(s3.copy_object, Bucket=bucket, Key="orig", CopySource=f"{bucket}/orig") == ("InvalidRequest", 400)


def test_presigned_get_url(s3_server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="shared/file.txt", Body=b"presigned body")
    v4 = s3_server.client(signature_version="s3v4")  # boto3 presigns with SigV2 unless told; Kiln checks SigV4
    url = v4.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared/file.txt"}, ExpiresIn=60)
    assert "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned body"
    tampered = url.replace("shared/file.txt", "shared/other.txt")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(tampered, timeout=10)
    assert raised.value.code == 403 and b"SignatureDoesNotMatch" in raised.value.read()


def test_bad_credentials_are_refused_and_store_nothing(s3_server, s3, bucket):
    first = s3_server.first
    wrong_secret = s3_server.client(Account(first.account_id, first.access_key_id, "x" * 40))
    assert error_of(wrong_secret.put_object, Bucket=bucket, Key="forged", Body=b"x") == ("SignatureDoesNotMatch", 403)
    assert error_of(s3.head_object, Bucket=bucket, Key="forged")[1] == 404
    unknown = s3_server.client(Account("000000000000", "AKIAUNKNOWNKEY000000", "y" * 40))
    assert error_of(unknown.list_buckets) == ("InvalidAccessKeyId", 403)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{s3_server.endpoint}/{bucket}", timeout=10)  # no signature at all
    assert raised.value.code == 403
    assert b"<Code>AccessDenied</Code>" in raised.value.read()
    assert raised.value.headers["x-amz-request-id"]


def test_second_account_is_isolated(s3_server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="private", Body=b"mine")
    other = s3_server.client(s3_server.second)
    assert bucket not in [b["Name"] for b in other.list_buckets()["Buckets"]]
    assert error_of(other.list_objects_v2, Bucket=bucket) == ("AccessDenied", 403)
    assert error_of(other.get_object, Bucket=bucket, Key="private") == ("AccessDenied", 403)
    assert error_of(other.put_object, Bucket=bucket, Key="intruder", Body=b"x") == ("AccessDenied", 403)
    assert error_of(other.delete_object, Bucket=bucket, Key="private") == ("AccessDenied", 403)
    assert error_of(other.create_bucket, Bucket=bucket) == ("BucketAlreadyExists", 409)
    assert error_of(other.get_object, Bucket="no-such-bucket-here", Key="k") == ("NoSuchBucket", 404)
    assert error_of(s3.head_object, Bucket=bucket, Key="intruder")[1] == 404
    assert s3.get_object(Bucket=bucket, Key="private")["Body"].read() == b"mine"


def test_unsupported_features_say_so(s3, bucket):
    assert error_of(s3.get_bucket_acl, Bucket=bucket) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket=bucket, Key="kms", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId="alias/k")
    assert raised.value.response["Error"]["Code"] == "NotImplemented"
    assert "SSE-KMS" in raised.value.response["Error"]["Message"]


def aws(s3_server, *args: str) -> subprocess.CompletedProcess:
    account = s3_server.first
    env = {**os.environ, "AWS_ACCESS_KEY_ID": account.access_key_id,
           "AWS_SECRET_ACCESS_KEY": account.secret_access_key, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    done = subprocess.run([AWS, "--endpoint-url", s3_server.endpoint, *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_aws_cli(s3_server, tmp_path):
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_bytes(b"hello from the aws cli\n")
    big.write_bytes(os.urandom(9 * MB))  # over the CLI's 8 MB threshold: a multipart upload
    assert "make_bucket: cli-bucket" in aws(s3_server, "s3", "mb", "s3://cli-bucket").stdout
    aws(s3_server, "s3", "cp", str(small), "s3://cli-bucket/docs/small.txt")
    aws(s3_server, "s3", "cp", str(big), "s3://cli-bucket/big.bin")
    top = aws(s3_server, "s3", "ls", "s3://cli-bucket/").stdout
    assert "PRE docs/" in top and f"{9 * MB} big.bin" in top
    assert "small.txt" in aws(s3_server, "s3", "ls", "s3://cli-bucket/docs/").stdout
    aws(s3_server, "s3", "cp", "s3://cli-bucket/docs/small.txt", str(tmp_path / "small.out"))
    aws(s3_server, "s3", "cp", "s3://cli-bucket/big.bin", str(tmp_path / "big.out"))
    assert (tmp_path / "small.out").read_bytes() == small.read_bytes()
    assert (tmp_path / "big.out").read_bytes() == big.read_bytes()
    head = s3_server.client().head_object(Bucket="cli-bucket", Key="big.bin")
    assert "-" in head["ETag"]  # it really went up in parts


def test_hostile_overrides_and_ranges_get_a_4xx_or_are_ignored(s3_server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="hostile.txt", Body=b"0123456789")
    v4 = s3_server.client(signature_version="s3v4")
    for value in ("text/plain\r\nSet-Cookie: x=1", "text/\u0100plain"):  # a split response; not Latin-1
        url = v4.generate_presigned_url("get_object", ExpiresIn=60, Params={
            "Bucket": bucket, "Key": "hostile.txt", "ResponseContentType": value})
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(url, timeout=10)
        assert raised.value.code == 400 and b"response-content-type" in raised.value.read()
    # a Range no offset fits is ignored, as S3 ignores a range it cannot parse: the whole object comes back
    got = s3.get_object(Bucket=bucket, Key="hostile.txt", Range="bytes=" + "9" * 5000 + "-")
    assert got["Body"].read() == b"0123456789"


# ---- hostile input found by tests/api/test_fuzz.py: each was a 5xx or a dropped connection ------------------

def signed_raw(s3_server, method: str, path: str, query: str = "", body: bytes = b"",
               headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:
    """A request signed as the first account, with path and query exactly as given (percent-encoded)."""
    host = s3_server.endpoint.removeprefix("http://")
    request = AWSRequest(method, f"{s3_server.endpoint}{path}" + (f"?{query}" if query else ""),
                         headers=dict(headers), data=body)
    first = s3_server.first
    S3SigV4Auth(BotoCredentials(first.access_key_id, first.secret_access_key), "s3", "us-east-1").add_auth(request)
    target = path + (f"?{query}" if query else "")
    return send_raw(s3_server.endpoint, method, target, [("Host", host), *request.headers.items()], body)


def xml_error(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error body, which must be well-formed XML."""
    root = ET.fromstring(body)
    return root.findtext("Code"), root.findtext("Message")


@pytest.mark.parametrize("query, name", [
    ("max-keys=%C2%B2", "max-keys"),  # '²': str.isdigit() said yes, int() said no (a 500)
    ("max-keys=%D9%A3", "max-keys"),  # an Arabic-Indic 3: int() took it, S3 does not
    ("max-keys=" + "9" * 5000, "max-keys"),  # past int()'s 4300-digit limit (a 500)
])
def test_integer_parameters_take_ascii_digits_only(s3_server, bucket, query, name):
    status, body = signed_raw(s3_server, "GET", f"/{bucket}", query)
    assert status == 400 and xml_error(body)[0] == "InvalidArgument" and name in xml_error(body)[1], body[:300]


@pytest.mark.parametrize("number", ["\u00b2", "9" * 5000])
def test_part_numbers_of_other_digits_are_malformed_xml(s3_server, s3, bucket, number):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="odd-parts")["UploadId"]
    listed = signed_raw(s3_server, "GET", f"/{bucket}/odd-parts", f"uploadId={upload}&max-parts={quote(number)}")
    assert listed[0] == 400 and xml_error(listed[1])[0] == "InvalidArgument", listed
    document = (f"<CompleteMultipartUpload><Part><PartNumber>{number}</PartNumber><ETag>x</ETag></Part>"
                "</CompleteMultipartUpload>").encode()
    status, body = signed_raw(s3_server, "POST", f"/{bucket}/odd-parts", f"uploadId={upload}", document)
    assert status == 400 and xml_error(body)[0] == "MalformedXML" and "PartNumber" in xml_error(body)[1], body[:300]
    s3.abort_multipart_upload(Bucket=bucket, Key="odd-parts", UploadId=upload)


def test_an_error_about_a_path_with_control_characters_is_well_formed_xml(s3_server):
    status, body = signed_raw(s3_server, "GET", "/%01bad%00bucket")  # XML 1.0 cannot hold \x01, even escaped
    assert status == 400
    root = ET.fromstring(body)  # raised ParseError: the client could not read why it was refused
    assert root.findtext("Code") == "InvalidBucketName" and root.findtext("Resource") == "/\\x01bad\\x00bucket"


def test_a_key_with_a_line_break_is_an_object_like_any_other(s3, bucket):
    s3.put_object(Bucket=bucket, Key="line\nbreak\r", Body=b"mine")  # was a plain-text 404 from the router
    assert s3.get_object(Bucket=bucket, Key="line\nbreak\r")["Body"].read() == b"mine"


def test_a_method_s3_does_not_serve_is_method_not_allowed(s3_server, bucket):
    status, body = signed_raw(s3_server, "PATCH", f"/{bucket}/key")  # was Starlette's plain-text 405
    assert status == 405 and xml_error(body)[0] == "MethodNotAllowed", body


def test_a_response_override_with_surrounding_spaces_is_sent_trimmed(s3_server, s3, bucket):
    s3.put_object(Bucket=bucket, Key="override.txt", Body=b"text")
    url = s3_server.client(signature_version="s3v4").generate_presigned_url("get_object", ExpiresIn=60, Params={
        "Bucket": bucket, "Key": "override.txt", "ResponseCacheControl": " no-cache\t"})
    with urllib.request.urlopen(url, timeout=10) as response:  # h11 refused to send " no-cache": no answer at all
        assert response.headers["cache-control"] == "no-cache" and response.read() == b"text"


@pytest.mark.parametrize("headers, query, code", [
    ((("Date", "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"),), "", "AuthorizationHeaderMalformed"),
    ((("Date", "Fri, 31 Dec 9999 23:59:59 -1400"),), "", "AuthorizationHeaderMalformed"),  # past 9999 in UTC
    ((), "X-Amz-Date=99991231T235959Z&X-Amz-Expires=604800", "RequestTimeTooSkewed"),  # expiry past 9999
])
def test_request_times_past_year_9999_are_refused(s3_server, headers, query, code):
    scope = "AKIAIOSFODNN7EXAMPLE/" + ("99991231" if query else "20200101") + "/us-east-1/s3/aws4_request"
    if query:
        query += (f"&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={quote(scope, safe='')}"
                  f"&X-Amz-SignedHeaders=host&X-Amz-Signature={'0' * 64}")
    else:
        headers += (("Authorization", f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=date;host, "
                                      f"Signature={'0' * 64}"),)
    host = s3_server.endpoint.removeprefix("http://")
    status, body = send_raw(s3_server.endpoint, "GET", "/bucket" + (f"?{query}" if query else ""),
                            [("Host", host), *headers], b"")
    assert 400 <= status < 500 and xml_error(body)[0] == code, body[:300]


@pytest.mark.parametrize("api", ["s3", "sagemaker"])
def test_a_client_that_leaves_mid_body_is_one_info_line(s3_server, bucket, api):
    """Content-Length says 1,000,000, a few bytes come, the socket closes: not an error with a traceback."""
    log = s3_server.server.log_path
    seen = log.read_text()
    first = s3_server.first
    if api == "s3":
        method, path = "PUT", f"/{bucket}/left-early"
        request = AWSRequest(method, f"{s3_server.endpoint}{path}",
                             headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
        S3SigV4Auth(BotoCredentials(first.access_key_id, first.secret_access_key), "s3", "us-east-1").add_auth(request)
    else:
        method, path = "POST", "/"
        request = AWSRequest(method, f"{s3_server.endpoint}{path}", data=b"{}", headers={
            "X-Amz-Target": "SageMaker.ListCompilationJobs", "Content-Type": "application/x-amz-json-1.1"})
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    host = s3_server.endpoint.removeprefix("http://")
    with socket.create_connection(tuple(host.split(":"))) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: 1000000\r\n\r\n".encode()
                     + b"a few bytes")
        time.sleep(0.2)  # the server is reading the body when the client goes
    line = f"INFO kiln.api: client disconnected before sending the whole body: {method} {path}"
    deadline = time.monotonic() + 20
    while line not in (new := log.read_text()[len(seen):]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert new.count(line) == 1, new
    assert "Traceback" not in new and " ERROR " not in new, new

"""aws-chunked bodies: AWS's own worked examples, signed chunks chained from a botocore-signed seed, and
unsigned bodies framed by botocore's own AwsChunkedWrapper."""
from __future__ import annotations

import hashlib
import hmac
import io
import os
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HAS_CRT
from botocore.credentials import Credentials as BotoCredentials
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from modelkiln.auth import AuthError, AwsChunkedDecoder, Credentials, HttpRequest, authenticate, body_decoder, read_body
from modelkiln.auth.checksums import CHECKSUMS

# AWS's examples ("sigv4-streaming" and "sigv4-streaming-trailers" in the S3 API reference): 64 KiB + 1 KiB
# of 'a', signed with the documentation key on 2013-05-24.
DOC_CREDS = Credentials("123456789012", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
DOC_NOW = datetime(2013, 5, 24, 0, 1, tzinfo=timezone.utc)
DOC = {
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD": (
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
        "x-amz-storage-class",
        "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
         "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
         "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"],
        b"",
    ),
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER": (
        "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class;"
        "x-amz-trailer",
        "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
        ["b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
         "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
         "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"],
        b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
        b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n",
    ),
}


class Crc32c:
    """CRC-32C (Castagnoli) in pure Python: slow, but enough to check AWS's crc32c example without awscrt."""

    TABLE: tuple[int, ...] = ()

    def __init__(self) -> None:
        self.crc = 0xFFFFFFFF

    def update(self, data: bytes) -> None:
        crc, table = self.crc, self.TABLE
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        self.crc = crc

    def digest(self) -> bytes:
        return (self.crc ^ 0xFFFFFFFF).to_bytes(4, "big")


def _crc32c_entry(byte: int) -> int:
    for _ in range(8):
        byte = (byte >> 1) ^ (0x82F63B78 if byte & 1 else 0)
    return byte


Crc32c.TABLE = tuple(_crc32c_entry(i) for i in range(256))
WITH_CRC32C = {**CHECKSUMS, "crc32c": Crc32c}


def doc_request(mode: str) -> tuple[HttpRequest, bytes]:
    signed, seed, sigs, trailer = DOC[mode]
    body = (b"10000;chunk-signature=%s\r\n%s\r\n" % (sigs[0].encode(), b"a" * 65536)
            + b"400;chunk-signature=%s\r\n%s\r\n" % (sigs[1].encode(), b"a" * 1024)
            + b"0;chunk-signature=%s\r\n" % sigs[2].encode() + trailer + b"\r\n")
    headers = [
        ("Host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"), ("x-amz-content-sha256", mode),
        ("Content-Encoding", "aws-chunked"), ("x-amz-decoded-content-length", "66560"),
        ("Authorization", f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
                          f"SignedHeaders={signed},Signature={seed}"),
    ]
    headers.append(("x-amz-trailer", "x-amz-checksum-crc32c") if trailer else ("Content-Length", str(len(body))))
    return HttpRequest("PUT", "/examplebucket/chunkObject.txt", "", headers, None), body


def decode(request: HttpRequest, body: bytes, lookup, now=None, piece: int = 8192, **kwargs) -> tuple[bytes, dict]:
    decoder = body_decoder(authenticate(request, lookup, now=now), request.headers, **kwargs)
    out = b"".join(read_body(decoder, (body[i:i + piece] for i in range(0, len(body), piece))))
    return out, decoder.finish()


@pytest.mark.parametrize("mode", sorted(DOC))
def test_aws_documented_chunked_upload(mode):
    request, body = doc_request(mode)
    if mode.endswith("TRAILER") and not HAS_CRT:  # crc32c needs awscrt: refused, not taken unchecked
        with pytest.raises(AuthError) as caught:
            decode(request, body, {DOC_CREDS.access_key_id: DOC_CREDS}.get, DOC_NOW)
        assert caught.value.kind == "unsupported"
    payload, trailers = decode(request, body, {DOC_CREDS.access_key_id: DOC_CREDS}.get, DOC_NOW,
                               checksums=WITH_CRC32C)
    assert payload == b"a" * 66560
    assert trailers == ({"x-amz-checksum-crc32c": "sOO8/Q=="} if mode.endswith("TRAILER") else {})


# --- signed chunks chained from a seed that botocore signed -------------------------------------------------

def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def encode_signed(key: bytes, timestamp: str, scope: str, seed: str, pieces: list[bytes],
                  trailers: dict[str, str] | None = None) -> bytes:
    """An aws-chunked body as AWS's reference describes it, written here independently of the decoder."""
    out, previous = bytearray(), seed
    for data in [*pieces, b""]:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", timestamp, scope, previous,
                         hashlib.sha256(b"").hexdigest(), hashlib.sha256(data).hexdigest()])
        previous = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        out += b"%x;chunk-signature=%s\r\n%s" % (len(data), previous.encode(), data + b"\r\n" if data else b"")
    if trailers is not None:
        canonical = "".join(f"{k}:{v}\n" for k, v in trailers.items())
        sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", timestamp, scope, previous,
                         hashlib.sha256(canonical.encode()).hexdigest()])
        out += canonical.replace("\n", "\r\n").encode()
        out += b"x-amz-trailer-signature:%s\r\n" % hmac.new(key, sts.encode(), hashlib.sha256).hexdigest().encode()
    return bytes(out + b"\r\n")


def test_the_test_encoder_reproduces_aws_example():
    key = signing_key(DOC_CREDS.secret_access_key, "20130524", "us-east-1", "s3")
    _, seed, _, _ = DOC["STREAMING-AWS4-HMAC-SHA256-PAYLOAD"]
    body = encode_signed(key, "20130524T000000Z", "20130524/us-east-1/s3/aws4_request", seed,
                         [b"a" * 65536, b"a" * 1024])
    assert body == doc_request("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")[1]


class StreamingS3Signer(S3SigV4Auth):
    """botocore's S3 signer announcing an aws-chunked body, as the Java and Go SDKs send (botocore never does)."""

    def __init__(self, creds: Credentials, mode: str) -> None:
        super().__init__(BotoCredentials(creds.access_key_id, creds.secret_access_key), "s3", "eu-west-3")
        self.mode = mode

    def payload(self, request: AWSRequest) -> str:
        return self.mode


def signed_upload(creds: Credentials, pieces: list[bytes], crc32: str | None = None) -> tuple[HttpRequest, bytes]:
    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if crc32 else "")
    headers = {"Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": str(sum(map(len, pieces)))}
    if crc32:
        headers["X-Amz-Trailer"] = "x-amz-checksum-crc32"
    signed = AWSRequest("PUT", "http://127.0.0.1:9000/bucket/model.tar.gz", headers=headers)
    StreamingS3Signer(creds, mode).add_auth(signed)
    timestamp = signed.context["timestamp"]
    seed = signed.headers["Authorization"].rsplit("Signature=", 1)[1]
    key = signing_key(creds.secret_access_key, timestamp[:8], "eu-west-3", "s3")
    body = encode_signed(key, timestamp, f"{timestamp[:8]}/eu-west-3/s3/aws4_request", seed, pieces,
                         {"x-amz-checksum-crc32": crc32} if crc32 else None)
    url = urlsplit(signed.url)
    request = HttpRequest("PUT", url.path, url.query, [("Host", url.netloc), *signed.headers.items()], None)
    return request, body


def crc32_b64(data: bytes) -> str:
    checksum = Crc32Checksum()
    checksum.update(data)
    return checksum.b64digest()


PIECES = [os.urandom(65536), os.urandom(65536), os.urandom(1000)]


@pytest.fixture
def creds() -> Credentials:
    return Credentials("123456789012", "AKIAKILNTEST00000000", "k" * 40)


def test_signed_chunks_decode(creds):
    lookup = {creds.access_key_id: creds}.get
    request, body = signed_upload(creds, PIECES)
    assert decode(request, body, lookup, piece=1000) == (b"".join(PIECES), {})
    request, body = signed_upload(creds, PIECES, crc32=crc32_b64(b"".join(PIECES)))
    payload, trailers = decode(request, body, lookup, piece=1)  # one byte at a time: framing split anywhere
    assert payload == b"".join(PIECES) and trailers == {"x-amz-checksum-crc32": crc32_b64(payload)}


def kind(request: HttpRequest, body: bytes, lookup, **kwargs) -> str:
    with pytest.raises(AuthError) as caught:
        decode(request, body, lookup, **kwargs)
    return caught.value.kind


def test_signed_chunk_tampering_is_caught(creds):
    lookup = {creds.access_key_id: creds}.get
    request, body = signed_upload(creds, PIECES)
    flipped = bytearray(body)
    flipped[body.index(PIECES[1]) + 100] ^= 1
    assert kind(request, bytes(flipped), lookup) == "bad_signature"
    first_end = body.index(PIECES[1]) - len(b"10000;chunk-signature=") - 64 - 2
    second_end = body.index(PIECES[2]) - len(b"3e8;chunk-signature=") - 64 - 2
    dropped = body[:first_end] + body[second_end:]  # the second chunk left out, framing intact
    assert kind(request, dropped, lookup) == "bad_signature"
    assert kind(request, body[:-40], lookup) == "incomplete_body"  # truncated inside the final chunk
    assert kind(request, body + b"extra", lookup) == "incomplete_body"
    request, body = signed_upload(creds, PIECES, crc32=crc32_b64(b"".join(PIECES)))
    forged = body.replace(crc32_b64(b"".join(PIECES)).encode(), crc32_b64(b"other").encode())
    assert kind(request, forged, lookup) == "bad_signature"  # the trailer is signed
    assert kind(request, body, lookup, max_chunk_size=1024) == "incomplete_body"  # refused before buffering


# --- unsigned chunks with a checksum trailer, framed by botocore itself -------------------------------------

def unsigned_body(data: bytes, chunk_size: int = 65536) -> bytes:
    wrapper = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32",
                                chunk_size=chunk_size)
    return wrapper.read()


def test_unsigned_trailer_decoder_streams_in_bounded_memory():
    data = os.urandom(3 * 1024 * 1024 + 17)
    body = unsigned_body(data, chunk_size=1024 * 1024)
    decoder = AwsChunkedDecoder("STREAMING-UNSIGNED-PAYLOAD-TRAILER", None, trailer_names=["x-amz-checksum-crc32"],
                                decoded_length=len(data))
    out, fed = [], 0
    for i in range(0, len(body), 65536):
        produced = decoder.feed(body[i:i + 65536])
        fed += 65536
        if produced and not out:
            assert fed < 2 * 1024 * 1024  # the first chunk comes out long before the body ends
        out += produced
    assert decoder.finish() == {"x-amz-checksum-crc32": crc32_b64(data)}
    assert b"".join(out) == data


def test_unsigned_trailer_mismatches_are_caught():
    data = os.urandom(200_000)
    body = unsigned_body(data)

    def run(body: bytes, names=("x-amz-checksum-crc32",), length: int | None = len(data)) -> str:
        with pytest.raises(AuthError) as caught:
            decoder = AwsChunkedDecoder("STREAMING-UNSIGNED-PAYLOAD-TRAILER", None, trailer_names=list(names),
                                        decoded_length=length)
            list(read_body(decoder, body))
        return caught.value.kind

    flipped = bytearray(body)
    flipped[body.index(data[150_000:150_100]) + 5] ^= 0x80
    assert run(bytes(flipped)) == "bad_digest"
    assert run(body, length=len(data) + 1) == "incomplete_body"
    assert run(body, length=len(data) - 1) == "incomplete_body"
    assert run(body, names=("x-amz-checksum-sha256",)) == "malformed"  # trailer is not the one declared
    assert run(body, names=("x-amz-meta-x",)) == "malformed"
    assert run(body.replace(b"\r\n0\r\n", b"\r\n0;chunk-signature=" + b"0" * 64 + b"\r\n")) == "incomplete_body"
    if not HAS_CRT:
        assert run(body, names=("x-amz-checksum-crc32c",)) == "unsupported"

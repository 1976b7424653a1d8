"""Accounts, access keys and AWS Signature Version 4 verification for `kiln serve`.

    store = AccountStore(data_dir / "keys.json")
    verified = authenticate(HttpRequest(method, path, query, headers, body), store.lookup, services={"s3"})
    decoder = body_decoder(verified, request.headers)   # then feed()/finish() the body, or read_body()
    ... except AuthError as e: e.json() / e.s3() -> WireError(code, message, http_status)
"""
from modelkiln.auth.accounts import AccountError, AccountStore, Credentials
from modelkiln.auth.chunked import AwsChunkedDecoder
from modelkiln.auth.errors import JSON_ERRORS, S3_ERRORS, AuthError, WireError
from modelkiln.auth.payload import PlainBody, body_decoder, read_body
from modelkiln.auth.request import Headers, HttpRequest
from modelkiln.auth.sigv4 import ChunkSigning, Principal, Verified, authenticate

__all__ = [
    "JSON_ERRORS",
    "S3_ERRORS",
    "AccountError",
    "AccountStore",
    "AuthError",
    "AwsChunkedDecoder",
    "ChunkSigning",
    "Credentials",
    "Headers",
    "HttpRequest",
    "PlainBody",
    "Principal",
    "Verified",
    "WireError",
    "authenticate",
    "body_decoder",
    "read_body",
]

"""Check a request body as it streams, the way its verified signature says: hex SHA-256, UNSIGNED-PAYLOAD,
or aws-chunked (see `chunked.py`). Every decoder has the same two calls, so sync and async servers use it
alike: `feed(bytes) -> [payload bytes]` as data arrives, `finish() -> trailers` at the end.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import BinaryIO, Protocol

from modelkiln.auth.checksums import CHECKSUMS, Factory
from modelkiln.auth.chunked import MAX_CHUNK_SIZE, AwsChunkedDecoder
from modelkiln.auth.errors import AuthError
from modelkiln.auth.request import Headers
from modelkiln.auth.sigv4 import STREAMING_MODES, Verified

READ_SIZE = 64 * 1024


class BodyDecoder(Protocol):
    def feed(self, data: bytes) -> list[bytes]: ...

    def finish(self) -> dict[str, str]: ...


class PlainBody:
    """A body sent as is; checked at the end against the hex SHA-256 it was signed with, if any."""

    def __init__(self, expected_sha256: str | None) -> None:
        self._expected = expected_sha256.lower() if expected_sha256 else None
        self._hash = hashlib.sha256()

    def feed(self, data: bytes) -> list[bytes]:
        """Pass bytes through, hashing them."""
        if self._expected:
            self._hash.update(data)
        return [data] if data else []

    def finish(self) -> dict[str, str]:
        """Raise AuthError('bad_digest') if the body is not the one signed; a plain body has no trailers."""
        if self._expected and not hmac.compare_digest(self._hash.hexdigest(), self._expected):
            raise AuthError("bad_digest", "The body does not match the x-amz-content-sha256 it was signed with.")
        return {}


def body_decoder(
    verified: Verified,
    headers: Headers,
    *,
    checksums: Mapping[str, Factory] = CHECKSUMS,
    max_chunk_size: int = MAX_CHUNK_SIZE,
) -> BodyDecoder:
    """The decoder for this request's body: aws-chunked for STREAMING-* modes, else a plain (hashed) body."""
    mode = verified.payload_hash
    if mode not in STREAMING_MODES:
        return PlainBody(mode if len(mode) == 64 else None)
    return AwsChunkedDecoder(
        mode,
        verified.chunk_signing,
        trailer_names=_trailer_names(headers),
        decoded_length=_decoded_length(headers),
        checksums=checksums,
        max_chunk_size=max_chunk_size,
    )


def read_body(decoder: BodyDecoder, source: bytes | BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    """Feed a whole body (bytes, a binary file, or an iterable of pieces) and yield the checked payload."""
    if isinstance(source, bytes):
        pieces: Iterable[bytes] = (source,)
    elif hasattr(source, "read"):
        pieces = iter(lambda: source.read(READ_SIZE), b"")
    else:
        pieces = source
    for piece in pieces:
        yield from decoder.feed(piece)
    decoder.finish()


def _trailer_names(headers: Headers) -> list[str]:
    names = [n.strip().lower() for value in headers.get_all("x-amz-trailer") for n in value.split(",")]
    return [n for n in names if n]


def _decoded_length(headers: Headers) -> int | None:
    values = headers.get_all("x-amz-decoded-content-length")
    if not values:
        return None  # botocore omits it when it cannot know the length of a stream
    if len(values) > 1 or not re.fullmatch(r"[0-9]{1,19}", values[0].strip()):
        raise AuthError("malformed", "x-amz-decoded-content-length must appear once, as a number of bytes.")
    return int(values[0])

"""Decode an aws-chunked body, checking every chunk signature, the trailers and the decoded length.

Sans-IO: `feed()` takes bytes as they arrive (from a socket, an ASGI receive loop or a file) and returns the
payload bytes that are now proven; `finish()` says the body has ended. Memory stays bounded by one chunk
(`max_chunk_size`). Wire format (AWS "sigv4-streaming" and "sigv4-streaming-trailers"):

    signed:    <hex size>;chunk-signature=<sig>\\r\\n<data>\\r\\n ... 0;chunk-signature=<sig>\\r\\n
    unsigned:  <hex size>\\r\\n<data>\\r\\n ... 0\\r\\n
    then:      [<trailer>:<value>\\r\\n ... [x-amz-trailer-signature:<sig>\\r\\n]] \\r\\n

A consumer must discard the upload when feed() or finish() raises: data of earlier chunks was already given.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

from modelkiln.auth.checksums import CHECKSUMS, KNOWN, PREFIX, Factory, Hasher
from modelkiln.auth.errors import AuthError
from modelkiln.auth.sigv4 import (
    STREAMING_MODES,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    ChunkSigning,
)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_CHUNK_SIZE = 16 * 1024 * 1024  # SDKs send 64 KiB to 1 MiB; one chunk is held until its signature checks
MAX_LINE = 4096
_SIGNED_HEADER = re.compile(rb"([0-9a-fA-F]{1,16});chunk-signature=([0-9a-f]{64})")
_UNSIGNED_HEADER = re.compile(rb"[0-9a-fA-F]{1,16}")
_TRAILER_SIGNATURE = "x-amz-trailer-signature"


def _framing(message: str) -> AuthError:
    return AuthError("incomplete_body", message)


class AwsChunkedDecoder:
    """Push-style decoder of one aws-chunked body; `trailers` holds the checked trailers once finished."""

    def __init__(
        self,
        mode: str,
        signing: ChunkSigning | None,
        *,
        trailer_names: Sequence[str] = (),
        decoded_length: int | None = None,
        checksums: Mapping[str, Factory] = CHECKSUMS,
        max_chunk_size: int = MAX_CHUNK_SIZE,
    ) -> None:
        if mode not in STREAMING_MODES:
            raise ValueError(f"not an aws-chunked mode: {mode}")
        self._signed = mode in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        if self._signed and signing is None:
            raise ValueError("signed chunks need the request's ChunkSigning")
        wants_trailers = mode in (STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
        if wants_trailers != bool(trailer_names):
            raise AuthError("malformed", f"{mode} needs x-amz-trailer to be {'set' if wants_trailers else 'absent'}.")
        self._signing = signing
        self._previous = signing.seed_signature if signing else ""
        self._hashers = _checksum_hashers(trailer_names, checksums)
        self._trailer_signed = mode == STREAMING_SIGNED_TRAILER
        self._decoded_length = decoded_length
        self._max_chunk = max_chunk_size
        self._buffer = bytearray()
        self._state = "header"  # -> "data" -> "header" ... -> "trailers" -> "done"
        self._chunk_size = 0
        self._chunk_signature = ""
        self._chunks = 0
        self._total = 0
        self._trailer_lines: list[tuple[str, str]] = []
        self.trailers: dict[str, str] = {}

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes of the body; return the payload bytes proven so far (maybe none)."""
        self._buffer += data
        out: list[bytes] = []
        while True:
            if self._state == "header":
                line = self._line()
                if line is None:
                    return out
                self._start_chunk(line)
            elif self._state == "data":
                end = self._chunk_size + 2
                if len(self._buffer) < end:
                    return out
                if self._buffer[self._chunk_size:end] != b"\r\n":
                    raise _framing(f"Chunk {self._chunks} is not followed by CRLF where its size says it ends.")
                payload = bytes(self._buffer[: self._chunk_size])
                del self._buffer[:end]
                self._accept_chunk(payload)
                self._state = "header"
                out.append(payload)
            elif self._state == "trailers":
                line = self._line()
                if line is None:
                    return out
                self._trailer_line(line)
            else:  # done: tolerate stray line ends some clients add, nothing else
                if self._buffer.strip(b"\r\n"):
                    raise _framing("The body continues after its final chunk and trailers.")
                self._buffer.clear()
                return out

    def finish(self) -> dict[str, str]:
        """The body has ended: raise unless it ended exactly after the final chunk; return the trailers."""
        if self._state != "done":
            raise _framing("The body ended before its final chunk (aws-chunked stream truncated).")
        return self.trailers

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n", 0, MAX_LINE + 2)
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise _framing("An aws-chunked header or trailer line is too long.")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _start_chunk(self, line: bytes) -> None:
        match = (_SIGNED_HEADER if self._signed else _UNSIGNED_HEADER).fullmatch(line)
        if match is None:
            raise _framing(f"Chunk {self._chunks + 1} has a malformed header line.")
        size = int(match.group(1) if self._signed else match.group(0), 16)
        if size > self._max_chunk:
            raise _framing(f"Chunk {self._chunks + 1} declares {size} bytes, more than {self._max_chunk} allowed.")
        if self._decoded_length is not None and self._total + size > self._decoded_length:
            raise _framing(f"The chunks carry more than x-amz-decoded-content-length ({self._decoded_length}).")
        self._chunks += 1
        self._chunk_size = size
        self._chunk_signature = match.group(2).decode() if self._signed else ""
        if size == 0:  # the final chunk: its (empty) data is just the line end, read with the trailers
            self._accept_chunk(b"")
            self._state = "trailers"
        else:
            self._state = "data"

    def _accept_chunk(self, payload: bytes) -> None:
        if self._signed:
            assert self._signing is not None
            s = self._signing
            sts = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", s.timestamp, s.scope, self._previous, EMPTY_SHA256,
                             hashlib.sha256(payload).hexdigest()))
            if not hmac.compare_digest(s.sign(sts).encode(), self._chunk_signature.encode()):
                raise AuthError("bad_signature", f"The signature of chunk {self._chunks} does not match.")
            self._previous = self._chunk_signature
        for hasher in self._hashers.values():
            hasher.update(payload)
        self._total += len(payload)

    def _trailer_line(self, line: bytes) -> None:
        if line:
            name, colon, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if not colon or any(name == seen for seen, _ in self._trailer_lines):
                raise AuthError("malformed", f"Trailer line {name[:64]!r} is malformed or repeated.")
            if len(self._trailer_lines) > len(self._hashers):
                raise AuthError("malformed", "More trailers than x-amz-trailer declares.")
            self._trailer_lines.append((name, value.strip()))
            return
        self._check_trailers()
        self._state = "done"

    def _check_trailers(self) -> None:
        lines = dict(self._trailer_lines)
        signature = lines.pop(_TRAILER_SIGNATURE, None)
        if self._trailer_signed:
            if signature is None:
                raise AuthError("bad_signature", "The trailers carry no x-amz-trailer-signature.")
            self._check_trailer_signature(signature)
        elif signature is not None:
            raise AuthError("malformed", "x-amz-trailer-signature is only valid with signed trailers.")
        if set(lines) != set(self._hashers):
            raise AuthError("malformed", f"The trailers {sorted(lines)} differ from x-amz-trailer "
                            f"{sorted(self._hashers)}.")
        for name, hasher in self._hashers.items():
            computed = base64.b64encode(hasher.digest()).decode()
            if not hmac.compare_digest(computed.encode(), lines[name].encode()):
                raise AuthError("bad_digest", f"The body does not match its {name} trailer.")
        if self._decoded_length is not None and self._total != self._decoded_length:
            raise _framing(f"The chunks carry {self._total} bytes, x-amz-decoded-content-length says "
                           f"{self._decoded_length}.")
        self.trailers = lines

    def _check_trailer_signature(self, signature: str) -> None:
        assert self._signing is not None
        s = self._signing
        canonical = "".join(f"{n}:{v}\n" for n, v in self._trailer_lines if n != _TRAILER_SIGNATURE)
        sts = "\n".join(("AWS4-HMAC-SHA256-TRAILER", s.timestamp, s.scope, self._previous,
                         hashlib.sha256(canonical.encode()).hexdigest()))
        if not hmac.compare_digest(s.sign(sts).encode(), signature.encode()):
            raise AuthError("bad_signature", "The trailer signature does not match.")


def _checksum_hashers(trailer_names: Sequence[str], checksums: Mapping[str, Factory]) -> dict[str, Hasher]:
    hashers: dict[str, Hasher] = {}
    for name in trailer_names:
        algorithm = name.removeprefix(PREFIX)
        if not name.startswith(PREFIX) or algorithm not in KNOWN:
            raise AuthError("malformed", f"Unsupported trailer {name[:64]!r}: only x-amz-checksum-* trailers.")
        if algorithm not in checksums:
            raise AuthError("unsupported", f"This server cannot verify {name} (it needs awscrt); use CRC32, "
                            "SHA1 or SHA256.")
        if name in hashers:
            raise AuthError("malformed", f"x-amz-trailer names {name} twice.")
        hashers[name] = checksums[algorithm]()
    return hashers

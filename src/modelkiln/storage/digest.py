"""Body streaming and digests: MD5 ETags, S3's multipart ETag, and the checksums S3 calls CRC32/SHA1/SHA256."""
from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Iterable, Iterator

from modelkiln.storage.base import BadDigest, Body, InvalidArgument, UnsupportedFeature

CHUNK = 1024 * 1024  # bodies move in chunks of this size, so memory stays bounded whatever the object size
_HASHES = {"SHA1": "sha1", "SHA256": "sha256"}
SUPPORTED_CHECKSUMS = ("CRC32", *_HASHES)


def iter_chunks(body: Body) -> Iterator[bytes]:
    """Chunks of body, which may be bytes, a binary file object, or an iterable of bytes."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        view = memoryview(body)
        for i in range(0, len(view), CHUNK):
            yield bytes(view[i:i + CHUNK])
        return
    read = getattr(body, "read", None)
    if read is not None:
        while chunk := read(CHUNK):
            yield chunk
        return
    for chunk in body:
        yield bytes(chunk)


def normalize_checksums(checksums: dict[str, str] | None) -> dict[str, str]:
    """Checksums keyed by upper-case algorithm: at most one, as S3 keeps one per object, and one we can verify."""
    out = {alg.upper(): value for alg, value in (checksums or {}).items()}
    if len(out) > 1:
        raise InvalidArgument(f"send one checksum per object, not {len(out)} ({', '.join(out)})")
    for alg in out:
        if alg not in SUPPORTED_CHECKSUMS:
            raise UnsupportedFeature(f"checksum algorithm {alg} is not supported here; "
                                     f"send one of {', '.join(SUPPORTED_CHECKSUMS)} instead")
    return out


class BodyDigest:
    """Size, MD5 and the requested checksums of a body, fed chunk by chunk."""

    def __init__(self, algorithms: Iterable[str] = ()) -> None:
        wanted = set(algorithms)
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._crc32: int | None = 0 if "CRC32" in wanted else None
        self._hashes = {alg: hashlib.new(name) for alg, name in _HASHES.items() if alg in wanted}

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._md5.update(chunk)
        if self._crc32 is not None:
            self._crc32 = zlib.crc32(chunk, self._crc32)
        for h in self._hashes.values():
            h.update(chunk)

    @property
    def md5(self) -> bytes:
        return self._md5.digest()

    @property
    def etag(self) -> str:
        return f'"{self._md5.hexdigest()}"'

    def checksums(self) -> dict[str, str]:
        """Computed checksums, base64 of the big-endian digest as S3's x-amz-checksum-* headers carry them."""
        out = {alg: base64.b64encode(h.digest()).decode() for alg, h in self._hashes.items()}
        if self._crc32 is not None:
            out["CRC32"] = base64.b64encode(self._crc32.to_bytes(4, "big")).decode()
        return out

    def verify(self, claimed: dict[str, str]) -> None:
        """Raise BadDigest if any claimed checksum differs from the computed one."""
        computed = self.checksums()
        for alg, value in claimed.items():
            if computed.get(alg) != value:
                raise BadDigest(f"The {alg} you specified did not match the calculated checksum")


def strip_etag(etag: str) -> str:
    """An ETag without its quotes, for comparing what clients send back."""
    return etag.strip().strip('"').lower()


def multipart_etag(part_md5_hexes: list[str]) -> str:
    """S3's multipart ETag: MD5 of the concatenated binary part MD5s, then '-' and the part count."""
    joined = b"".join(bytes.fromhex(h) for h in part_md5_hexes)
    return f'"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(part_md5_hexes)}"'

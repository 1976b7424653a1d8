"""The x-amz-checksum-* algorithms this server can verify: botocore's own implementations, so we compute
exactly what the client computed. crc32c and crc64nvme need awscrt (botocore[crt]); without it they are
known but unavailable, and a body that declares one is refused rather than taken unchecked.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from botocore import httpchecksum
from botocore.compat import HAS_CRT


class Hasher(Protocol):
    def update(self, chunk: bytes) -> None: ...

    def digest(self) -> bytes: ...


Factory = Callable[[], Hasher]

# Every algorithm S3 clients send; only those in CHECKSUMS can be checked here.
KNOWN = frozenset({"crc32", "crc32c", "crc64nvme", "sha1", "sha256", "sha512", "md5", "xxhash64", "xxhash3",
                   "xxhash128"})

CHECKSUMS: dict[str, Factory] = {
    "crc32": httpchecksum.Crc32Checksum,  # zlib's crc32 (stdlib)
    "sha1": httpchecksum.Sha1Checksum,
    "sha256": httpchecksum.Sha256Checksum,
    "sha512": httpchecksum.Sha512Checksum,
}
if HAS_CRT:  # pragma: no cover - awscrt is not a dependency of Kiln
    CHECKSUMS["crc32"] = httpchecksum.CrtCrc32Checksum
    CHECKSUMS["crc32c"] = httpchecksum.CrtCrc32cChecksum
    if httpchecksum.has_minimum_crt_version((0, 23, 4)):
        CHECKSUMS["crc64nvme"] = httpchecksum.CrtCrc64NvmeChecksum

PREFIX = "x-amz-checksum-"

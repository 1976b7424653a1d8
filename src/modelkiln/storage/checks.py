"""Argument checks every backend applies the same way: bucket names, keys, metadata, parts, ranges."""
from __future__ import annotations

import re
from itertools import pairwise
from typing import Sequence

from modelkiln.storage.base import (
    MAX_KEY_BYTES, MAX_PART_NUMBER, ByteRange, InvalidArgument, InvalidBucketName, InvalidPartOrder, InvalidRange,
    KeyTooLong,
)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def validate_bucket_name(name: str) -> None:
    """Raise InvalidBucketName unless name follows S3's rules (this also makes it a safe directory name)."""
    ok = (isinstance(name, str) and _BUCKET.fullmatch(name) is not None and ".." not in name
          and not _IP_ADDRESS.fullmatch(name) and not name.startswith(("xn--", "sthree-"))
          and not name.endswith(("-s3alias", "--ol-s3")))
    if not ok:
        raise InvalidBucketName(
            f"{name!r} is not a valid bucket name: use 3-63 lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit, with no '..', and not shaped like an IP address")


def validate_key(key: str) -> None:
    """Raise unless key is a non-empty string of at most 1024 UTF-8 bytes."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("an object key must be a non-empty string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise InvalidArgument(f"object key is not valid UTF-8: {e}") from None
    if size > MAX_KEY_BYTES:
        raise KeyTooLong(f"Your key is too long: {size} bytes of UTF-8, the limit is {MAX_KEY_BYTES}")


def validate_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """User metadata with lowercased names, as S3 stores it; names and values are ASCII (they travel as headers)."""
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        ok = (isinstance(name, str) and _HEADER_NAME.fullmatch(name) is not None and isinstance(value, str)
              and value.isascii() and value.isprintable())
        if not ok:
            raise InvalidArgument(f"user metadata {name!r}: {value!r} is not allowed: names are HTTP header tokens "
                                  "and values printable ASCII (they travel as x-amz-meta-* headers)")
        out[name.lower()] = value
    return out


def validate_part_number(number: int) -> None:
    """Raise InvalidArgument unless 1 <= number <= 10000."""
    if not isinstance(number, int) or not 1 <= number <= MAX_PART_NUMBER:
        raise InvalidArgument(f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive")


def validate_part_list(parts: Sequence[tuple[int, str]]) -> None:
    """Raise unless the (number, etag) list of a completion is non-empty and strictly ascending."""
    if not parts:
        raise InvalidArgument("You must specify at least one part")
    if any(b <= a for (a, _), (b, _) in pairwise(parts)):
        raise InvalidPartOrder("The list of parts was not in ascending order. Parts must be ordered by part number.")


def validate_max_keys(max_keys: int) -> int:
    """max_keys capped at 1000 as S3 does; negative is an error."""
    if not isinstance(max_keys, int) or max_keys < 0:
        raise InvalidArgument("max-keys must be a non-negative integer")
    return min(max_keys, 1000)


def range_header(byte_range: ByteRange) -> str:
    """The HTTP Range header for byte_range, after checking its shape."""
    start, end = byte_range
    if start is None:
        if end is None or end <= 0:
            raise InvalidRange("a suffix range must ask for at least one byte")
        return f"bytes=-{end}"
    if start < 0 or (end is not None and end < start):
        raise InvalidArgument(f"byte range ({start}, {end}) is malformed: need 0 <= start <= end")
    return f"bytes={start}-" if end is None else f"bytes={start}-{end}"


def resolve_range(byte_range: ByteRange, size: int) -> tuple[int, int]:
    """The inclusive (first, last) bytes byte_range selects in an object of size bytes (for Content-Range)."""
    range_header(byte_range)
    start, end = byte_range
    if start is None:
        assert end is not None
        if size == 0:
            raise InvalidRange("The requested range is not satisfiable")
        return max(0, size - end), size - 1
    if start >= size:
        raise InvalidRange(f"The requested range is not satisfiable: it starts at {start}, the object has {size} bytes")
    return start, size - 1 if end is None else min(end, size - 1)

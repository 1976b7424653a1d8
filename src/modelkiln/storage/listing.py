"""ListObjectsV2 paging over a sorted key list: delimiter folding and signed continuation tokens.

A token carries the last entry (key or common prefix) a page returned, signed with the store's secret and
bound to the bucket, prefix and delimiter it was issued for. It is only ever compared with keys, never
turned into a path, and a tampered or transplanted token is refused with InvalidArgument, as S3 does.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Callable, Iterable, Iterator

from modelkiln.storage.base import InvalidArgument, ListPage, ObjectInfo


def fold(keys: Iterable[str], prefix: str, delimiter: str | None) -> Iterator[tuple[str, bool]]:
    """(entry, is_common_prefix) in key order; keys sharing a common prefix come out once, as the prefix."""
    last_prefix = None
    for key in keys:
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut < 0:
            yield key, False
            continue
        common = key[:cut + len(delimiter or "")]
        if common != last_prefix:  # keys under one prefix are contiguous in sorted order
            last_prefix = common
            yield common, True


def build_page(keys: Iterable[str], describe: Callable[[str], ObjectInfo | None], prefix: str,
               delimiter: str | None, max_keys: int, after: str, sign: Callable[[str], str]) -> ListPage:
    """One page of at most max_keys entries strictly after `after`; describe(key) is None for a vanished key."""
    if max_keys == 0:
        return ListPage((), (), False, None, 0)
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    last, truncated = "", False
    for entry, is_prefix in fold(keys, prefix, delimiter):
        if entry <= after:  # folded entries never decrease, so this resumes exactly after the token's entry
            continue
        if len(objects) + len(prefixes) == max_keys:
            truncated = True
            break
        if is_prefix:
            prefixes.append(entry)
        else:
            info = describe(entry)
            if info is None:  # deleted between the directory scan and now
                continue
            objects.append(info)
        last = entry
    token = sign(last) if truncated else None
    return ListPage(tuple(objects), tuple(prefixes), truncated, token, len(objects) + len(prefixes))


def _mac(secret: bytes, scope: str, body: str) -> str:
    return hmac.new(secret, f"{scope}\n{body}".encode(), hashlib.sha256).hexdigest()[:32]


def token_scope(bucket: str, prefix: str, delimiter: str | None) -> str:
    """What a token is bound to: a token from another listing does not verify here."""
    return json.dumps([bucket, prefix, delimiter])


def make_token(secret: bytes, scope: str, after: str) -> str:
    """An opaque token meaning 'continue after this entry'."""
    body = base64.urlsafe_b64encode(after.encode()).decode()
    return f"{body}.{_mac(secret, scope, body)}"


def read_token(secret: bytes, scope: str, token: str) -> str:
    """The entry a token continues after; InvalidArgument if it was not issued for this listing."""
    body, _, mac = str(token).rpartition(".")
    if body and mac.isascii() and hmac.compare_digest(mac, _mac(secret, scope, body)):
        try:
            return base64.urlsafe_b64decode(body.encode()).decode()
        except (binascii.Error, UnicodeDecodeError):
            pass
    raise InvalidArgument("The continuation token provided is incorrect")

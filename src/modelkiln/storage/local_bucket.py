"""One bucket's directory in the local store: where objects live and how they are committed atomically.

    <bucket>/bucket.json        {"name", "owner_account", "created"}
    <bucket>/lock               flock: shared by writers, exclusive while the bucket is being deleted
    <bucket>/locks/<00..3f>     flock stripes serialising commits of the same key
    <bucket>/meta/<name>.json   an object's sidecar: key, size, etag, ..., and "blob", the file of its bytes
    <bucket>/data/<blob>        an object's bytes; a blob never changes once named
    <bucket>/tmp/               in-flight writes, never listed
    <bucket>/uploads/<id>/      multipart uploads (see local_multipart.py)

<name> is the key's UTF-8 in lowercase base32hex (reversible, no '/', never '.' or '..'), or for keys too
long for a file name '~' + its SHA-256; no key can name a path outside the bucket. The sidecar is the commit
point: a writer stages the bytes in tmp/, renames them to a new blob, then replaces the sidecar, so a
reader sees either the old sidecar and blob or the new ones. The old blob is unlinked after the swap; a
reader that read the old sidecar just before retries, and one that already opened it keeps reading it.
"""
from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import BinaryIO, Iterator

from modelkiln.storage.base import Body, BucketInfo, NoSuchBucket, ObjectInfo, StorageError
from modelkiln.storage.digest import BodyDigest, iter_chunks
from modelkiln.storage.files import fsync_dir, locked, read_json, remove_quietly, temp_name, write_json_atomic

STRIPES = 64
NAME_LIMIT = 240  # file names stop at 255 bytes; leave room for ".json"
SUBDIRS = ("meta", "data", "tmp", "uploads", "locks")
_INFO_FIELDS = [f.name for f in fields(ObjectInfo)]


def object_name(key: str) -> str:
    """The file name of key's sidecar (without .json)."""
    raw = key.encode()
    name = base64.b32hexencode(raw).decode().rstrip("=").lower()
    return name if len(name) <= NAME_LIMIT else "~" + hashlib.sha256(raw).hexdigest()


def key_of_name(name: str) -> str | None:
    """The key a sidecar name encodes, or None for a hashed name (read the sidecar for those)."""
    if name.startswith("~"):
        return None
    return base64.b32hexdecode(name.upper() + "=" * (-len(name) % 8)).decode()


@dataclass(frozen=True)
class Staged:
    """A body written and synced to a temp file, with its digests."""

    path: Path
    size: int
    md5_hex: str
    checksums: dict[str, str]


@dataclass(frozen=True)
class BucketDir:
    """An existing bucket's directory, as its owner saw it when it was opened."""

    path: Path
    info: BucketInfo
    durable: bool = True

    @contextmanager
    def lock(self, shared: bool = True) -> Iterator[None]:
        """Hold the bucket lock; NoSuchBucket if the bucket was deleted (or replaced) since it was opened."""
        try:
            with locked(self.path / "lock", shared=shared):
                if read_info(self.path) != self.info:
                    raise FileNotFoundError(self.path)
                yield
        except FileNotFoundError:
            raise NoSuchBucket(f"The specified bucket does not exist: {self.info.name}") from None

    def _key_lock(self, key: str):
        stripe = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % STRIPES
        return locked(self.path / "locks" / f"{stripe:02x}", create=True)

    def _sidecar_path(self, key: str) -> Path:
        return self.path / "meta" / f"{object_name(key)}.json"

    def record(self, key: str) -> dict | None:
        """The key's sidecar, or None if the object does not exist."""
        rec = read_json(self._sidecar_path(key))
        return rec if rec is not None and rec["key"] == key else None

    def describe(self, key: str) -> ObjectInfo | None:
        """The key's ObjectInfo, or None if the object does not exist."""
        rec = self.record(key)
        return None if rec is None else ObjectInfo(**{k: rec[k] for k in _INFO_FIELDS})

    def open(self, key: str) -> tuple[ObjectInfo, BinaryIO] | None:
        """The object's info and an open reader of its bytes, or None if it does not exist."""
        for _ in range(100):
            rec = self.record(key)
            if rec is None:
                return None
            try:
                f = open(self.path / "data" / rec["blob"], "rb")
            except FileNotFoundError:
                continue  # replaced, and its old blob removed, after we read the sidecar: read it again
            return ObjectInfo(**{k: rec[k] for k in _INFO_FIELDS}), f
        raise StorageError("InternalError", f"object {key!r} kept changing while it was being opened; retry")

    def keys(self, prefix: str = "") -> list[str]:
        """Every key starting with prefix, sorted (code point order is UTF-8 byte order)."""
        out = []
        with os.scandir(self.path / "meta") as entries:
            for entry in entries:
                try:
                    key = key_of_name(entry.name.removesuffix(".json"))
                except ValueError:  # not a name this store wrote: ignore it rather than fail every listing
                    continue
                if key is None:
                    rec = read_json(Path(entry.path))
                    key = rec["key"] if rec is not None else None
                if key is not None and key.startswith(prefix):
                    out.append(key)
        out.sort()
        return out

    def is_empty(self) -> bool:
        with os.scandir(self.path / "meta") as entries:
            return next(entries, None) is None

    def stage(self, body: Body, checksums: dict[str, str] | None = None) -> Staged:
        """Stream body to a synced temp file, checking the claimed checksums; nothing is left on failure."""
        claimed = checksums or {}
        digest = BodyDigest(claimed)
        tmp = temp_name(self.path / "tmp")
        try:
            f = open(tmp, "xb")
        except FileNotFoundError:
            raise NoSuchBucket(f"The specified bucket does not exist: {self.info.name}") from None
        try:
            with f:
                for chunk in iter_chunks(body):
                    digest.update(chunk)
                    f.write(chunk)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            digest.verify(claimed)
        except BaseException:
            remove_quietly(tmp)
            raise
        return Staged(tmp, digest.size, digest.md5.hex(), digest.checksums())

    def commit(self, key: str, staged: Staged, content_type: str, metadata: dict[str, str],
               etag: str | None = None) -> ObjectInfo:
        """Make staged the object at key: the last commit wins and readers never see a torn object."""
        blob = uuid.uuid4().hex
        info = ObjectInfo(self.info.name, key, staged.size, etag or f'"{staged.md5_hex}"', time.time(),
                          content_type, metadata, staged.checksums, None)
        try:
            os.replace(staged.path, self.path / "data" / blob)
        except FileNotFoundError:  # the bucket was deleted while we streamed
            remove_quietly(staged.path)
            raise NoSuchBucket(f"The specified bucket does not exist: {self.info.name}") from None
        try:
            if self.durable:
                fsync_dir(self.path / "data")  # the blob's name must be durable before a sidecar points at it
            with self.lock(), self._key_lock(key):
                old = self.record(key)
                write_json_atomic(self._sidecar_path(key), {**asdict(info), "blob": blob}, self.path / "tmp",
                                  self.durable)
        except BaseException:
            remove_quietly(self.path / "data" / blob)
            raise
        if old is not None:
            remove_quietly(self.path / "data" / old["blob"])
        return info

    def remove(self, key: str) -> None:
        """Delete the object at key if there is one."""
        with self.lock(), self._key_lock(key):
            old = self.record(key)
            if old is None:
                return
            remove_quietly(self._sidecar_path(key))
            if self.durable:
                fsync_dir(self.path / "meta")
        remove_quietly(self.path / "data" / old["blob"])


def read_info(path: Path) -> BucketInfo | None:
    """The BucketInfo in a bucket directory, or None if there is no bucket there."""
    rec = read_json(path / "bucket.json")
    return None if rec is None else BucketInfo(**rec)

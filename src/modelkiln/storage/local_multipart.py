"""Multipart uploads in the local store.

    <bucket>/uploads/<upload id>/lock            flock serialising part writes, completion and abort
    <bucket>/uploads/<upload id>/upload.json     {"key", "content_type", "metadata", "initiated"}
    <bucket>/uploads/<upload id>/<nnnnn>.<md5>   part nnnnn's bytes, named with their MD5 (the part's ETag)

Completion streams the chosen parts into one staged file and commits it like a PutObject, so the object
appears whole or not at all; the upload's directory is then renamed into tmp/ and removed.
Lock order, everywhere: upload lock, then bucket lock, then key lock.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from modelkiln.storage.base import (
    MIN_PART_SIZE, Body, EntityTooSmall, InvalidPart, NoSuchUpload, ObjectInfo, Part,
)
from modelkiln.storage.checks import validate_part_list, validate_part_number
from modelkiln.storage.digest import multipart_etag, strip_etag
from modelkiln.storage.files import fsync_dir, locked, read_json, remove_quietly, temp_name, write_json_atomic
from modelkiln.storage.local_bucket import BucketDir

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")  # checked before an id from a client becomes a path
_PART_FILE = re.compile(r"(\d{5})\.([0-9a-f]{32})")


def create_upload(bucket: BucketDir, key: str, content_type: str, metadata: dict[str, str]) -> str:
    """Start an upload to key; returns its id."""
    upload_id = uuid.uuid4().hex
    with bucket.lock():
        staging = temp_name(bucket.path / "tmp")
        staging.mkdir()
        (staging / "lock").touch()
        record = {"key": key, "content_type": content_type, "metadata": metadata, "initiated": time.time()}
        write_json_atomic(staging / "upload.json", record, bucket.path / "tmp", bucket.durable)
        os.rename(staging, bucket.path / "uploads" / upload_id)
    return upload_id


@contextmanager
def _upload(bucket: BucketDir, key: str, upload_id: str) -> Iterator[tuple[Path, dict]]:
    """Hold the upload's lock; yields its directory and record. NoSuchUpload if it is not (or no longer) there."""
    missing = NoSuchUpload("The specified upload does not exist. The upload ID may be invalid, "
                           "or the upload may have been aborted or completed.")
    if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
        raise missing
    path = bucket.path / "uploads" / upload_id
    try:
        with locked(path / "lock"):
            record = read_json(path / "upload.json")
            if record is None or record["key"] != key:
                raise missing
            yield path, record
    except FileNotFoundError:
        raise missing from None


def _parts(upload: Path) -> dict[int, tuple[Path, str]]:
    """number -> (file, md5 hex) of the upload's parts."""
    found = {}
    with os.scandir(upload) as entries:
        for entry in entries:
            m = _PART_FILE.fullmatch(entry.name)
            if m:
                found[int(m.group(1))] = (Path(entry.path), m.group(2))
    return found


def upload_part(bucket: BucketDir, key: str, upload_id: str, number: int, body: Body) -> Part:
    """Store part number, replacing an earlier part of that number."""
    validate_part_number(number)
    with _upload(bucket, key, upload_id):
        pass  # fail fast on an unknown upload before streaming the body
    staged = bucket.stage(body)
    try:
        with _upload(bucket, key, upload_id) as (upload, _):
            final = upload / f"{number:05d}.{staged.md5_hex}"
            os.replace(staged.path, final)
            for other in upload.glob(f"{number:05d}.*"):
                if other != final:
                    remove_quietly(other)
            if bucket.durable:
                fsync_dir(upload)
    finally:
        remove_quietly(staged.path)
    return Part(number, f'"{staged.md5_hex}"', staged.size)


def list_parts(bucket: BucketDir, key: str, upload_id: str) -> list[Part]:
    """The upload's parts, by number."""
    with _upload(bucket, key, upload_id) as (upload, _):
        parts = _parts(upload)
        return [Part(n, f'"{md5}"', path.stat().st_size) for n, (path, md5) in sorted(parts.items())]


def _concat(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                yield chunk


def complete(bucket: BucketDir, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> ObjectInfo:
    """Assemble the listed parts into the object at key, atomically, and end the upload."""
    validate_part_list(parts)
    with _upload(bucket, key, upload_id) as (upload, record):
        have = _parts(upload)
        chosen: list[tuple[Path, str]] = []
        for i, (number, etag) in enumerate(parts):
            got = have.get(number)
            if got is None or got[1] != strip_etag(etag):
                raise InvalidPart(f"Part {number} was not uploaded or its ETag {etag} does not match.")
            if i < len(parts) - 1 and got[0].stat().st_size < MIN_PART_SIZE:
                raise EntityTooSmall(f"Part {number} is smaller than the 5 MiB minimum for all but the last part")
            chosen.append(got)
        staged = bucket.stage(_concat([path for path, _ in chosen]))
        info = bucket.commit(key, staged, record["content_type"], record["metadata"],
                             etag=multipart_etag([md5 for _, md5 in chosen]))
        _discard(bucket, upload)
    return info


def abort(bucket: BucketDir, key: str, upload_id: str) -> None:
    """Discard the upload and its parts."""
    with _upload(bucket, key, upload_id) as (upload, _):
        _discard(bucket, upload)


def _discard(bucket: BucketDir, upload: Path) -> None:
    # renamed first so the upload vanishes at once rather than part by part
    trash = temp_name(bucket.path / "tmp")
    os.rename(upload, trash)
    shutil.rmtree(trash, ignore_errors=True)

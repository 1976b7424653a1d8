"""Filesystem primitives for the local store: atomic writes, flock locks, and a bounded reader."""
from __future__ import annotations

import fcntl
import io
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def temp_name(tmp_dir: Path) -> Path:
    """A fresh path in tmp_dir (which lies on the same filesystem as the destination, so rename is atomic)."""
    return tmp_dir / uuid.uuid4().hex


def fsync_dir(path: Path) -> None:
    """Make renames into path durable: a rename survives a crash only once its directory is synced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    """Unlink path if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_json_atomic(path: Path, data: Any, tmp_dir: Path, durable: bool) -> None:
    """Replace path with data as JSON: written to a temp file, synced, renamed, so readers never see part."""
    tmp = temp_name(tmp_dir)
    try:
        with open(tmp, "xb") as f:
            f.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The JSON document at path, or None if there is none."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError):
        return None


@contextmanager
def locked(path: Path, shared: bool = False, create: bool = False) -> Iterator[None]:
    """Hold an flock on path (across threads and processes); FileNotFoundError if the file is or goes away."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        held, now = os.fstat(fd), os.stat(path)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):  # moved away (bucket deleted) while we waited
            raise FileNotFoundError(path)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class _Window(io.RawIOBase):
    """length bytes of an open file from its current position on."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self._f, self._left = f, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(min(len(buffer), self._left))
        buffer[:len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def window(f: BinaryIO, first: int, last: int) -> BinaryIO:
    """A reader of bytes first..last (inclusive) of f; closing it closes f."""
    f.seek(first)
    return io.BufferedReader(_Window(f, last - first + 1))  # type: ignore[return-value]

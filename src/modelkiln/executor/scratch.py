"""Job directories on a worker's disk: $KILN_WORK_DIR/kiln-jobs (else the temp dir), one `job-*` each.

Each directory has a lock file beside it that its supervisor holds (flock) while the job runs; the kernel drops
the lock when that process dies, however it dies. Every supervisor sweeps the directories whose lock is free
before it starts, so a killed worker's scratch (its jobs' models, artifacts and temp files) does not pile up.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def root() -> Path:
    return Path(os.environ.get("KILN_WORK_DIR") or tempfile.gettempdir()) / "kiln-jobs"


def job_dir(name: str, nonce: str) -> Path:
    """name: e.g. "17-1" (compilation job 17, attempt 1) or "compare-4" (device job 4's comparison)."""
    return root() / f"job-{name}-{nonce}"


def _lock_path(work: Path) -> Path:
    return work.with_name(work.name + ".lock")


@contextlib.contextmanager
def held(work: Path) -> Iterator[None]:
    """Hold work's lock for the block; the directory and its lock are removed at its end."""
    work.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_path(work)
    while True:  # a sweep may unlink the file between our open and our flock: lock the file that is there
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.unlink(lock)
        os.close(fd)


def sweep() -> list[Path]:
    """Remove the job directories no live supervisor holds; the ones removed."""
    removed = []
    try:
        entries = list(root().iterdir())
    except FileNotFoundError:
        return removed
    for path in entries:  # a directory without its lock file was left by a supervisor that died in held()'s end
        if path.name.startswith("job-") and path.is_dir() and not _lock_path(path).exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for lock in entries:
        if not (lock.name.startswith("job-") and lock.name.endswith(".lock")):
            continue
        try:
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its job is running
        work = lock.with_name(lock.name.removesuffix(".lock"))
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
        removed.append(work)
    return removed

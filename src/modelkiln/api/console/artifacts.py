"""A job's artifact as the console serves it: the object itself, and the report.json packed inside it.

Every read goes through the object store as the signed-in account, so an artifact URI naming another
account's bucket is refused by the store (AccessDenied) exactly as an S3 GET would be.
"""
from __future__ import annotations

import json
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from modelkiln.errors import KilnError
from modelkiln.jobs.model import Job
from modelkiln.storage import ObjectInfo, ObjectStore, parse_s3_uri

REPORT_NAME = "report.json"
MAX_REPORT_BYTES = 8 * 1024 * 1024  # a report of hundreds of candidates is well under 1 MB
CHUNK = 256 * 1024


class NoArtifact(KilnError):
    """The job has no artifact the account can read (not finished, failed, or the object is gone)."""


@dataclass(frozen=True)
class ReportResult:
    """report.json parsed, or why it could not be read (shown on the job's page instead of the tables)."""

    report: dict[str, Any] | None
    problem: str = ""


def open_artifact(objects: ObjectStore, account_id: str, job: Job) -> tuple[ObjectInfo, BinaryIO]:
    """The job's artifact object and an open reader of it (the caller closes it); NoArtifact if there is none."""
    if not job.artifact_uri:
        raise NoArtifact(f"compilation job {job.name} has no artifact")
    try:
        location = parse_s3_uri(job.artifact_uri)
        return objects.get_object(account_id, location.bucket, location.key)
    except KilnError as exc:  # StorageError included: a missing object, or a bucket not the account's
        raise NoArtifact(f"the artifact of {job.name} cannot be read: {exc}") from None


def chunks(reader: BinaryIO) -> Iterator[bytes]:
    """The reader's bytes in chunks, closing it at the end (or when the client goes away mid-download)."""
    try:
        while chunk := reader.read(CHUNK):
            yield chunk
    finally:
        reader.close()


class ReportCache:
    """report.json of recent artifacts, by (account, URI, digest): the report sits at the end of the archive,
    so finding it reads the whole artifact once; a finished job's artifact never changes under the same digest."""

    def __init__(self, objects: ObjectStore, size: int = 64) -> None:
        self.objects = objects
        self.size = size
        self._entries: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, account_id: str, job: Job) -> ReportResult:
        if not job.artifact_uri:
            return ReportResult(None, "")
        key = (account_id, job.artifact_uri, job.artifact_digest or "")
        with self._guard:
            if key in self._entries:
                self._entries.move_to_end(key)
                return ReportResult(self._entries[key])
        try:
            report = self._read(account_id, job)
        except NoArtifact as exc:
            return ReportResult(None, str(exc))
        with self._guard:
            self._entries[key] = report
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return ReportResult(report)

    def _read(self, account_id: str, job: Job) -> dict[str, Any]:
        _, reader = open_artifact(self.objects, account_id, job)
        with reader:
            try:
                return report_in(reader)
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                raise NoArtifact(f"the artifact of {job.name} is not a readable model.tar.gz: {exc}") from None


def report_in(reader: BinaryIO) -> dict[str, Any]:
    """report.json from a model.tar.gz stream (read once, front to back); NoArtifact if it holds none."""
    with tarfile.open(fileobj=reader, mode="r|gz") as archive:
        for member in archive:
            if member.name.removeprefix("./") != REPORT_NAME or not member.isfile():
                continue
            if member.size > MAX_REPORT_BYTES:
                raise NoArtifact(f"its report.json is {member.size} bytes, more than the console reads")
            f = archive.extractfile(member)
            assert f is not None  # a regular file always has a reader
            report = json.loads(f.read())
            if not isinstance(report, dict):
                raise NoArtifact("its report.json is not a JSON object")
            return report
    raise NoArtifact("the artifact holds no report.json")

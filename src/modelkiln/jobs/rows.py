"""Between `Job` records and table rows: load (optionally locking), insert values, and compare-and-set saves."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from modelkiln.jobs.errors import StatusConflict
from modelkiln.jobs.model import Job
from modelkiln.jobs.schema import jobs, tags

# Job fields stored as columns of the same name; tags live in their own table.
JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(Job) if f.name != "tags")
assert set(JOB_COLUMNS) <= set(jobs.c.keys()), "schema.jobs lacks a Job field"


def name_key(name: str) -> str:
    """The case-folded name that is unique per account (SageMaker ARNs carry names lower-cased)."""
    return name.lower()


def values(job: Job) -> dict[str, Any]:
    """Column values to insert for a new job."""
    out = {c: getattr(job, c) for c in JOB_COLUMNS if c != "id"}
    out["name_key"] = name_key(job.name)
    return out


def to_job(row: sa.Row[Any], job_tags: dict[str, str] | None = None) -> Job:
    """The Job a row holds."""
    mapping = row._mapping
    return Job(**{c: mapping[c] for c in JOB_COLUMNS}, tags=dict(job_tags or {}))


def tags_of(conn: sa.Connection, ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """Each job's tags, keys in order, for the given job ids (one query)."""
    ids = list(ids)
    found: dict[int, dict[str, str]] = {i: {} for i in ids}
    if ids:
        query = sa.select(tags.c.job_id, tags.c.key, tags.c.value).where(tags.c.job_id.in_(ids)).order_by(tags.c.key)
        for job_id, key, value in conn.execute(query):
            found[job_id][key] = value
    return found


def jobs_with_tags(conn: sa.Connection, rows: Sequence[sa.Row[Any]]) -> list[Job]:
    """Rows as Jobs, tags included."""
    by_id = tags_of(conn, [r.id for r in rows])
    return [to_job(r, by_id[r.id]) for r in rows]


def load(conn: sa.Connection, account_id: str, name: str, *, lock: bool = False) -> Job | None:
    """The account's job of that name (any case), or None; `lock` holds its row until the transaction ends."""
    query = sa.select(jobs).where(jobs.c.account_id == account_id, jobs.c.name_key == name_key(name))
    if lock:  # PostgreSQL row lock; SQLite ignores it, its BEGIN IMMEDIATE already excludes other writers
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else jobs_with_tags(conn, [row])[0]


def save(conn: sa.Connection, old: Job, new: Job) -> None:
    """Write new's changed columns, only if the row still has old's status (compare-and-set)."""
    changes = {c: getattr(new, c) for c in JOB_COLUMNS if getattr(new, c) != getattr(old, c)}
    if not changes:
        return
    result = conn.execute(sa.update(jobs).where(jobs.c.id == old.id, jobs.c.status == old.status).values(changes))
    if result.rowcount != 1:  # only if a writer bypassed the row lock: never silently lose a status change
        raise StatusConflict(old.name, "changed concurrently", {old.status}, new.status)

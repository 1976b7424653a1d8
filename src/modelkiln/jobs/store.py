"""The durable job store: compilation jobs and their tags in SQLite (embedded) or PostgreSQL (several replicas).

    store = JobStore("sqlite:///var/lib/kiln/kiln.db")   # or postgresql+psycopg://user:pw@host/db
    store.create(Job.from_request(request, account_id))
    job = store.update_status(account_id, name, {INPROGRESS}, COMPLETED, artifact_uri=...)

Every method is one transaction. Status changes are compare-and-set: the job's row (PostgreSQL) or the whole
database (SQLite, BEGIN IMMEDIATE) stays locked while the state machine checks the move, so racing writers
(a Stop and a worker's completion) apply one after the other and the loser gets StatusConflict.
Worker leases (claim, renew, recovery, pending expiry) are in leases.py.
"""
from __future__ import annotations

import builtins  # JobStore.list shadows list in the class body
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from modelkiln.jobs import database, leases, paging
from modelkiln.jobs.errors import (
    IllegalTransition, JobExists, JobNotFound, JobNotTerminal, LeaseLost, StatusConflict, TagLimitExceeded,
    TooManyActiveJobs,
)
from modelkiln.jobs.model import ACTIVE, COMPLETED, INPROGRESS, STARTING, STOPPED, STOPPING, TERMINAL, Job, can_transition, transition
from modelkiln.jobs.rows import jobs_with_tags, load, name_key, save, values
from modelkiln.jobs.schema import jobs, logs, tags

if TYPE_CHECKING:
    from modelkiln.jobs.validation import ListRequest

MAX_TAGS = 50  # per resource, as SageMaker allows
SORT_COLUMNS = {"Name": jobs.c.name, "CreationTime": jobs.c.creation_time, "Status": jobs.c.status}
SORT_VALUE_TYPES: dict[str, type | tuple[type, ...]] = {"Name": str, "CreationTime": (int, float), "Status": str}


class JobStore:
    """Jobs by (account, name), names unique per account ignoring case. Times are epoch seconds (UTC)."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = database.open_engine(url)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Create or upgrade the schema to this Kiln's newest revision (safe to run at every start)."""
        database.migrate(self.engine)

    def close(self) -> None:
        """Release the store's database connections."""
        self.engine.dispose()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- jobs ------------------------------------------------------------------------------------------

    def create(self, job: Job, *, max_active: int | None = None) -> Job:
        """Store a new job (with its tags); JobExists if the account already has that name, TooManyActiveJobs if
        it already has `max_active` unfinished jobs (checked in the same transaction)."""
        try:
            with database.write(self.engine) as conn:
                if load(conn, job.account_id, job.name) is not None:
                    raise JobExists(job.account_id, job.name)
                if max_active is not None:
                    active = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                        jobs.c.account_id == job.account_id, jobs.c.status.in_(sorted(ACTIVE)))).scalar_one()
                    if active >= max_active:
                        raise TooManyActiveJobs(job.account_id, max_active)
                key = conn.execute(sa.insert(jobs).values(values(job))).inserted_primary_key
                assert key is not None
                row_id = key[0]
                if job.tags:
                    conn.execute(sa.insert(tags), [{"job_id": row_id, "key": k, "value": v}
                                                   for k, v in job.tags.items()])
        except sa.exc.IntegrityError as exc:  # PostgreSQL: a concurrent create won the unique index
            if self.exists(job.account_id, job.name):
                raise JobExists(job.account_id, job.name) from exc
            raise
        return dataclasses.replace(job, id=row_id)

    def exists(self, account_id: str, name: str) -> bool:
        """Whether the account has a job of that name."""
        with database.read(self.engine) as conn:
            return load(conn, account_id, name) is not None

    def get(self, account_id: str, name: str) -> Job:
        """The account's job of that name; JobNotFound if there is none."""
        with database.read(self.engine) as conn:
            return _found(load(conn, account_id, name), account_id, name)

    def wrote_artifact(self, account_id: str, uri: str) -> Job | None:
        """The account's newest COMPLETED job whose artifact is at uri (an inference job's artifact, traced to
        the compile that made it and so to its source model); None if no job of the account wrote it."""
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(jobs).where(
                jobs.c.account_id == account_id, jobs.c.status == COMPLETED, jobs.c.artifact_uri == uri)
                .order_by(jobs.c.creation_time.desc(), jobs.c.id.desc()).limit(1)).all()
            found = jobs_with_tags(conn, rows)
        return found[0] if found else None

    def list(self, account_id: str, request: ListRequest) -> tuple[builtins.list[Job], str | None]:
        """One page of ListCompilationJobs for the account, and the NextToken for the next (None on the last)."""
        sort, descending = SORT_COLUMNS[request.sort_by], request.sort_order == "Descending"
        kind = f"{request.sort_by}/{request.sort_order}"
        query = sa.select(jobs).where(jobs.c.account_id == account_id, *_filters(request))
        if request.next_token:
            key = paging.decode(request.next_token, kind, SORT_VALUE_TYPES[request.sort_by])
            query = query.where(paging.after((sort, jobs.c.id), key, descending))
        order = (sort.desc(), jobs.c.id.desc()) if descending else (sort.asc(), jobs.c.id.asc())
        with database.read(self.engine) as conn:
            rows = conn.execute(query.order_by(*order).limit(request.max_results + 1)).all()
            page = jobs_with_tags(conn, rows[:request.max_results])
        if len(rows) <= request.max_results:
            return page, None
        last = rows[request.max_results - 1]
        return page, paging.encode(kind, last._mapping[sort.key], last.id)

    def delete(self, account_id: str, name: str) -> None:
        """Remove a COMPLETED/FAILED/STOPPED job's record (not its artifacts); JobNotTerminal otherwise."""
        with database.write(self.engine) as conn:
            job = _found(load(conn, account_id, name, lock=True), account_id, name)
            if job.status not in TERMINAL:
                raise JobNotTerminal(job.name, job.status)
            conn.execute(sa.delete(tags).where(tags.c.job_id == job.id))
            conn.execute(sa.delete(logs).where(logs.c.job_id == job.id))
            conn.execute(sa.delete(jobs).where(jobs.c.id == job.id))

    # ---- status ----------------------------------------------------------------------------------------

    def update_status(self, account_id: str, name: str, expected: Iterable[str], new: str, *,
                      now: float | None = None, lease_owner: str | None = None, **fields: Any) -> Job:
        """Move the job to `new` if its status is one of `expected`, atomically; the moved Job.

        StatusConflict if it is in another status; with `lease_owner`, LeaseLost unless that worker holds it.
        `fields` may set model.RESULT_FIELDS (failure_reason, artifact_uri, artifact_digest, ...).
        """
        expected = frozenset(expected)
        for status in expected:
            if not can_transition(status, new):
                raise IllegalTransition(name, status, new)
        with database.write(self.engine) as conn:
            job = _found(load(conn, account_id, name, lock=True), account_id, name)
            if lease_owner is not None and job.lease_owner != lease_owner:
                raise LeaseLost(job.name, lease_owner)
            if job.status not in expected:
                raise StatusConflict(job.name, job.status, expected, new)
            moved = transition(job, new, now=now, **fields)
            save(conn, job, moved)
        return moved

    def request_stop(self, account_id: str, name: str, *, now: float | None = None) -> Job:
        """StopCompilationJob: STARTING -> STOPPED (no worker has it), INPROGRESS -> STOPPING; STOPPING stays.

        StatusConflict for a job already COMPLETED, FAILED or STOPPED.
        """
        with database.write(self.engine) as conn:
            job = _found(load(conn, account_id, name, lock=True), account_id, name)
            if job.status == STOPPING:
                return job
            if job.status not in (STARTING, INPROGRESS):
                raise StatusConflict(job.name, job.status, {STARTING, INPROGRESS}, STOPPING)
            moved = transition(job, STOPPED if job.status == STARTING else STOPPING, now=now)
            save(conn, job, dataclasses.replace(moved, stop_requested=True))
        return dataclasses.replace(moved, stop_requested=True)

    # ---- tags ------------------------------------------------------------------------------------------

    def add_tags(self, account_id: str, name: str, new_tags: Mapping[str, str]) -> None:
        """AddTags: add or overwrite; TagLimitExceeded past 50 tags on the job."""
        with database.write(self.engine) as conn:
            job = _found(load(conn, account_id, name, lock=True), account_id, name)
            count = len(set(job.tags) | set(new_tags))
            if count > MAX_TAGS:
                raise TagLimitExceeded(job.name, count, MAX_TAGS)
            if new_tags:
                conn.execute(sa.delete(tags).where(tags.c.job_id == job.id, tags.c.key.in_(list(new_tags))))
                conn.execute(sa.insert(tags), [{"job_id": job.id, "key": k, "value": v} for k, v in new_tags.items()])

    def list_tags(self, account_id: str, name: str, max_results: int = MAX_TAGS,
                  next_token: str | None = None) -> tuple[dict[str, str], str | None]:
        """ListTags: one page of the job's tags in key order, and the NextToken for the next (None on the last)."""
        with database.read(self.engine) as conn:
            job = _found(load(conn, account_id, name), account_id, name)
        keys = list(job.tags)  # at most 50: page in memory, the token still names the last key
        if next_token:
            last, _ = paging.decode(next_token, "tags", str, str)
            keys = [k for k in keys if k > last]
        page = {k: job.tags[k] for k in keys[:max_results]}
        more = len(keys) > max_results
        return page, paging.encode("tags", keys[max_results - 1], "") if more else None

    def delete_tags(self, account_id: str, name: str, keys: Iterable[str]) -> None:
        """DeleteTags: remove those keys; keys the job lacks are ignored, as SageMaker does."""
        with database.write(self.engine) as conn:
            job = _found(load(conn, account_id, name, lock=True), account_id, name)
            conn.execute(sa.delete(tags).where(tags.c.job_id == job.id, tags.c.key.in_(list(keys))))

    # ---- logs ------------------------------------------------------------------------------------------

    def append_log(self, job_id: int, lines: Iterable[str], *, now: float | None = None) -> None:
        """Add lines to the end of the job's log."""
        lines = list(lines)
        if not lines:
            return
        now = time.time() if now is None else now
        with database.write(self.engine) as conn:
            last = conn.execute(sa.select(sa.func.max(logs.c.seq)).where(logs.c.job_id == job_id)).scalar()
            start = 0 if last is None else last + 1
            conn.execute(sa.insert(logs), [{"job_id": job_id, "seq": start + i, "time": now, "line": line}
                                           for i, line in enumerate(lines)])

    def read_log(self, account_id: str, name: str) -> builtins.list[tuple[float, str]]:
        """The job's log as (time, line) pairs, oldest first; JobNotFound if the account has no such job."""
        with database.read(self.engine) as conn:
            job = _found(load(conn, account_id, name), account_id, name)
            rows = conn.execute(sa.select(logs.c.time, logs.c.line).where(logs.c.job_id == job.id)
                                .order_by(logs.c.seq)).all()
        return [(row.time, row.line) for row in rows]

    # ---- worker leases (see leases.py) -------------------------------------------------------------------

    def starting(self) -> builtins.list[Job]:
        """Every STARTING job, oldest first: the executor's queue."""
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(jobs).where(jobs.c.status == STARTING)
                                .order_by(jobs.c.creation_time, jobs.c.id)).all()
            return jobs_with_tags(conn, rows)

    def get_by_id(self, job_id: int) -> Job | None:
        """The job with that row id, whoever owns it (for workers); None once deleted."""
        with database.read(self.engine) as conn:
            found = jobs_with_tags(conn, conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).all())
        return found[0] if found else None

    def claim_next(self, worker_id: str, lease_s: float, *, job_id: int | None = None,
                   now: float | None = None) -> Job | None:
        """The oldest STARTING job (or job `job_id`, if still STARTING), moved to INPROGRESS with a lease for
        worker_id; None if there is none."""
        return leases.claim_next(self.engine, worker_id, lease_s, job_id=job_id, now=now)

    def renew_lease(self, account_id: str, name: str, worker_id: str, lease_s: float, *,
                    now: float | None = None) -> Job:
        """Extend worker_id's lease; the Job tells it whether a stop was requested. LeaseLost if it lost it."""
        return leases.renew(self.engine, account_id, name, worker_id, lease_s, now=now)

    def recover_expired_leases(self, now: float | None = None, *, max_attempts: int = leases.MAX_ATTEMPTS,
                               is_dead: Callable[[str], bool] | None = None) -> builtins.list[Job]:
        """Jobs whose worker stopped renewing (or that `is_dead(lease_owner)` says is gone): retried, failed, or
        (if stopping) stopped. The changed Jobs."""
        return leases.recover_expired(self.engine, now, max_attempts=max_attempts, is_dead=is_dead)

    def expire_pending(self, now: float | None = None) -> builtins.list[Job]:
        """FAIL STARTING jobs past their MaxPendingTimeInSeconds; the failed Jobs."""
        return leases.expire_pending(self.engine, now)


def _found(job: Job | None, account_id: str, name: str) -> Job:
    if job is None:
        raise JobNotFound(account_id, name)
    return job


def _filters(request: ListRequest) -> list[sa.ColumnElement[bool]]:
    """ListCompilationJobs' filters; the time bounds are exclusive, NameContains ignores case."""
    where: list[sa.ColumnElement[bool]] = []
    bounds = ((jobs.c.creation_time, request.creation_time_after, request.creation_time_before),
              (jobs.c.last_modified_time, request.last_modified_time_after, request.last_modified_time_before))
    for column, after, before in bounds:
        if after is not None:
            where.append(column > after.timestamp())
        if before is not None:
            where.append(column < before.timestamp())
    if request.name_contains:
        where.append(jobs.c.name_key.contains(name_key(request.name_contains), autoescape=True))
    if request.status_equals:
        where.append(jobs.c.status == request.status_equals)
    return where


"""Worker leases: claiming STARTING jobs, renewing, and recovering jobs whose worker vanished.

A worker holds a job while it renews its lease; a lapsed lease means the worker process is gone (the
compile itself runs in a sandboxed subprocess, so a crashing model fails the job, not the worker).
PostgreSQL: candidates are picked with SELECT ... FOR UPDATE SKIP LOCKED, so concurrent workers take
different jobs without waiting on each other. SQLite: BEGIN IMMEDIATE serializes writers, and the UPDATE
still carries `WHERE status = 'STARTING'` with a rowcount check.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

from modelkiln.jobs import database
from modelkiln.jobs.errors import JobNotFound, LeaseLost, StatusConflict
from modelkiln.jobs.model import FAILED, INPROGRESS, STARTING, STOPPED, STOPPING, Job, requeue, transition
from modelkiln.jobs.rows import jobs_with_tags, load, save
from modelkiln.jobs.schema import jobs

MAX_ATTEMPTS = 2  # a job whose worker vanished is retried once; a second loss fails it
_CLAIM_TRIES = 5  # a claim that lost a race (only possible if a writer skipped the row lock) tries the next job


def claim_next(engine: sa.Engine, worker_id: str, lease_s: float, *, job_id: int | None = None,
               now: float | None = None) -> Job | None:
    """The oldest STARTING job not past its pending deadline (or that job, if `job_id`), moved to INPROGRESS and
    leased to worker_id."""
    now = time.time() if now is None else now
    only = [jobs.c.id == job_id] if job_id is not None else []
    query = (sa.select(jobs)
             .where(jobs.c.status == STARTING, *only,
                    sa.or_(jobs.c.pending_deadline.is_(None), jobs.c.pending_deadline >= now))
             .order_by(jobs.c.creation_time, jobs.c.id).limit(1)
             .with_for_update(skip_locked=True))
    for _ in range(_CLAIM_TRIES):
        try:
            with database.write(engine) as conn:
                rows = conn.execute(query).all()
                if not rows:
                    return None
                job = jobs_with_tags(conn, rows)[0]
                claimed = dataclasses.replace(transition(job, INPROGRESS, now=now), attempts=job.attempts + 1,
                                              lease_owner=worker_id, lease_expires=now + lease_s)
                save(conn, job, claimed)  # UPDATE ... WHERE status = 'STARTING', rowcount checked
                return claimed
        except StatusConflict:
            continue
    return None


def renew(engine: sa.Engine, account_id: str, name: str, worker_id: str, lease_s: float, *,
          now: float | None = None) -> Job:
    """Extend worker_id's lease on an INPROGRESS/STOPPING job; LeaseLost if another worker holds it or it ended.

    Not a status change, so LastModifiedTime stays.
    """
    now = time.time() if now is None else now
    with database.write(engine) as conn:
        job = load(conn, account_id, name, lock=True)
        if job is None:
            raise JobNotFound(account_id, name)
        if job.lease_owner != worker_id or job.status not in (INPROGRESS, STOPPING):
            raise LeaseLost(job.name, worker_id)
        renewed = dataclasses.replace(job, lease_expires=now + lease_s)
        save(conn, job, renewed)
    return renewed


def recover_expired(engine: sa.Engine, now: float | None = None, *, max_attempts: int = MAX_ATTEMPTS,
                    is_dead: Callable[[str], bool] | None = None) -> list[Job]:
    """Jobs whose lease lapsed, or whose worker `is_dead` says is gone: STOPPING -> STOPPED; INPROGRESS ->
    STARTING again while attempts remain, else FAILED."""
    now = time.time() if now is None else now
    lost = jobs.c.lease_expires < now
    if is_dead is not None:  # then every leased job is looked at, and its owner asked about
        lost = sa.true()
    query = (sa.select(jobs)
             .where(jobs.c.status.in_((INPROGRESS, STOPPING)), lost)
             .order_by(jobs.c.id).with_for_update(skip_locked=True))
    changed = []
    with database.write(engine) as conn:
        for job in jobs_with_tags(conn, conn.execute(query).all()):
            lapsed = job.lease_expires is None or job.lease_expires < now
            if not lapsed and not (is_dead and job.lease_owner and is_dead(job.lease_owner)):
                continue
            if job.status == STOPPING:
                new = transition(job, STOPPED, now=now)
            elif job.attempts < max_attempts:
                new = requeue(job, now=now)
            else:
                new = transition(job, FAILED, now=now, failure_reason=_lost_reason(job, now))
            save(conn, job, new)
            changed.append(new)
    return changed


def expire_pending(engine: sa.Engine, now: float | None = None) -> list[Job]:
    """STARTING jobs past their MaxPendingTimeInSeconds -> FAILED, with a reason naming the limit."""
    now = time.time() if now is None else now
    query = (sa.select(jobs)
             .where(jobs.c.status == STARTING, jobs.c.pending_deadline < now)
             .order_by(jobs.c.id).with_for_update(skip_locked=True))
    failed = []
    with database.write(engine) as conn:
        for job in jobs_with_tags(conn, conn.execute(query).all()):
            new = transition(job, FAILED, now=now, failure_reason=_pending_reason(job, now))
            save(conn, job, new)
            failed.append(new)
    return failed


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _lost_reason(job: Job, now: float) -> str:
    lease = (f"its lease lapsed at {_utc(job.lease_expires)}" if job.lease_expires and job.lease_expires < now
             else "its process had exited")
    runs = "once" if job.attempts == 1 else f"{job.attempts} times"
    return (f"ServerError: the Kiln worker running this job ({job.lease_owner}) stopped responding ({lease}; "
            f"detected at {_utc(now)}); the job was started {runs} and no worker finished it. "
            "This is a Kiln server problem, not a problem with your model, unless the model exhausts the worker's "
            "memory: ask the Kiln operator to check the worker logs, then create the job again under a new name.")


def _pending_reason(job: Job, now: float) -> str:
    limit = job.stopping_condition.get("MaxPendingTimeInSeconds") or 0
    queued_since = (job.pending_deadline or now) - limit  # creation, or the requeue after a lost worker
    return (f"ClientError: StoppingCondition.MaxPendingTimeInSeconds: the job waited "
            f"{now - queued_since:.0f} s for a free Kiln worker, longer than its limit of {limit} s. "
            "Raise MaxPendingTimeInSeconds, or create the job again when the server is less busy.")

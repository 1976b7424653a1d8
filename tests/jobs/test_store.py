"""The job store on SQLite and on a real PostgreSQL server: CRUD, listing, tags, status CAS, leases, migrations."""
from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import time
from datetime import UTC, datetime

import botocore.session
import pytest
import sqlalchemy as sa
from botocore.paginate import Paginator

from modelkiln.jobs import database
from modelkiln.jobs.errors import (
    TooManyActiveJobs,
    IllegalTransition, InvalidToken, JobExists, JobNotFound, JobNotTerminal, LeaseLost, StatusConflict,
    TagLimitExceeded,
)
from modelkiln.jobs.model import COMPLETED, FAILED, INPROGRESS, STARTING, STOPPED, STOPPING, summary
from modelkiln.jobs.schema import jobs, metadata, tags
from modelkiln.jobs.shapes import service_model
from modelkiln.jobs.store import JobStore
from modelkiln.jobs.validation import validate_list_request
from tests.jobs.factories import ACCOUNT, OTHER_ACCOUNT, T0, make_job


def listing(store: JobStore, account: str = ACCOUNT, **params) -> tuple[list[str], str | None]:
    page, token = store.list(account, validate_list_request(params))
    return [j.name for j in page], token


def everything(store: JobStore, **params) -> list[str]:
    names, token = listing(store, **params)
    while token:
        more, token = listing(store, **params, NextToken=token)
        names += more
    return names


def ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


# ---- create / get / delete ----------------------------------------------------------------------------

def test_create_refuses_past_the_active_job_limit(store):
    store.create(make_job("one"), max_active=2)
    store.create(make_job("two"), max_active=2)
    store.create(make_job("other-account", account=OTHER_ACCOUNT), max_active=2)  # limits are per account
    with pytest.raises(TooManyActiveJobs) as caught:
        store.create(make_job("three"), max_active=2)
    assert caught.value.code == "ResourceLimitExceeded"
    store.update_status(ACCOUNT, "one", {STARTING}, STOPPED)
    store.create(make_job("three"), max_active=2)  # a finished job frees its slot


def test_create_then_get_round_trips_every_field(store):
    job = make_job("Resnet-1", tags={"team": "ml", "cost": ""}, vpc_config={"SecurityGroupIds": ["sg-1"],
                                                                             "Subnets": ["subnet-1"]})
    created = store.create(job)
    assert created.id is not None
    got = store.get(ACCOUNT, "Resnet-1")
    assert got == created
    assert got.creation_time == T0 and isinstance(got.creation_time, float)
    assert store.get(ACCOUNT, "RESNET-1") == got  # ARNs lower-case names, so names ignore case


def test_names_are_unique_per_account_only(store):
    store.create(make_job("dup"))
    with pytest.raises(JobExists) as info:
        store.create(make_job("dup"))
    assert info.value.code == "ResourceInUse"
    with pytest.raises(JobExists):
        store.create(make_job("DUP"))
    store.create(make_job("dup", account=OTHER_ACCOUNT))
    assert store.get(OTHER_ACCOUNT, "dup").account_id == OTHER_ACCOUNT
    assert store.get(ACCOUNT, "dup").account_id == ACCOUNT


def test_unknown_job_is_not_found(store):
    store.create(make_job("mine", account=OTHER_ACCOUNT))
    for call in (lambda: store.get(ACCOUNT, "mine"), lambda: store.delete(ACCOUNT, "mine"),
                 lambda: store.request_stop(ACCOUNT, "mine"), lambda: store.list_tags(ACCOUNT, "mine")):
        with pytest.raises(JobNotFound) as info:
            call()
        assert info.value.code == "ResourceNotFound"


def test_delete_only_in_a_terminal_state(store):
    store.create(make_job("job", tags={"k": "v"}))
    with pytest.raises(JobNotTerminal) as info:
        store.delete(ACCOUNT, "job")
    assert info.value.code == "ValidationException"
    store.claim_next("w", 60)
    store.request_stop(ACCOUNT, "job")
    with pytest.raises(JobNotTerminal):
        store.delete(ACCOUNT, "job")
    store.update_status(ACCOUNT, "job", {STOPPING}, STOPPED)
    store.delete(ACCOUNT, "job")
    with pytest.raises(JobNotFound):
        store.get(ACCOUNT, "job")
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tags)).scalar() == 0
    store.create(make_job("job"))  # the name is free again


# ---- status changes -----------------------------------------------------------------------------------

def test_every_state_change_bumps_last_modified_and_sets_times(store):
    store.create(make_job("job"))
    claimed = store.claim_next("w", 60, now=T0 + 1)
    assert (claimed.status, claimed.start_time, claimed.last_modified_time) == (INPROGRESS, T0 + 1, T0 + 1)
    done = store.update_status(ACCOUNT, "job", {INPROGRESS}, COMPLETED, now=T0 + 5,
                               artifact_uri="s3://bucket/out/model.tar.gz", artifact_digest="ab" * 32)
    assert store.get(ACCOUNT, "job") == done
    assert (done.last_modified_time, done.end_time, done.start_time) == (T0 + 5, T0 + 5, T0 + 1)
    assert done.lease_owner is None and done.artifact_uri == "s3://bucket/out/model.tar.gz"


def test_illegal_and_stale_transitions_are_refused(store):
    store.create(make_job("job"))
    with pytest.raises(IllegalTransition):
        store.update_status(ACCOUNT, "job", {STARTING}, COMPLETED)  # never ran
    with pytest.raises(StatusConflict) as info:
        store.update_status(ACCOUNT, "job", {INPROGRESS}, COMPLETED)
    assert info.value.current == STARTING
    store.update_status(ACCOUNT, "job", {STARTING}, FAILED, failure_reason="ClientError: bad model")
    for new in (STARTING, INPROGRESS, STOPPING, STOPPED, COMPLETED):
        with pytest.raises((IllegalTransition, StatusConflict)):
            store.update_status(ACCOUNT, "job", {FAILED}, new)
    with pytest.raises(StatusConflict):
        store.request_stop(ACCOUNT, "job")
    assert store.get(ACCOUNT, "job").status == FAILED


def test_stop_racing_completion_yields_a_legal_sequence(store):
    store.create(make_job("queued"))
    assert store.request_stop(ACCOUNT, "queued").status == STOPPED  # no worker had it yet
    assert store.claim_next("w", 60) is None
    store.create(make_job("running"))
    store.claim_next("w", 60)
    stopping = store.request_stop(ACCOUNT, "running")
    assert stopping.status == STOPPING and stopping.stop_requested
    assert store.request_stop(ACCOUNT, "running").status == STOPPING  # a second Stop changes nothing
    with pytest.raises(StatusConflict):  # the worker finished just after the Stop: it lost
        store.update_status(ACCOUNT, "running", {INPROGRESS}, COMPLETED, lease_owner="w")
    assert store.update_status(ACCOUNT, "running", {STOPPING}, STOPPED, lease_owner="w").status == STOPPED


# ---- listing -----------------------------------------------------------------------------------------

@pytest.fixture
def listed(store):
    """Ten jobs a second apart: name-3 COMPLETED, name-5 FAILED, name-7 STOPPED; one in another account."""
    for i in range(10):
        store.create(make_job(f"Name-{i}", at=T0 + i))
    store.create(make_job("Name-x", account=OTHER_ACCOUNT))
    for name, status in (("Name-3", COMPLETED), ("Name-5", FAILED), ("Name-7", STOPPED)):
        if status == STOPPED:
            store.request_stop(ACCOUNT, name, now=T0 + 100)
            continue
        store.update_status(ACCOUNT, name, {STARTING}, INPROGRESS, now=T0 + 100)
        store.update_status(ACCOUNT, name, {INPROGRESS}, status, now=T0 + 200, failure_reason="x")
    return store


def test_list_filters(listed):
    assert everything(listed) == [f"Name-{i}" for i in range(10)]
    assert everything(listed, NameContains="name-1") == ["Name-1"]  # case-insensitive
    assert everything(listed, StatusEquals="FAILED") == ["Name-5"]
    assert everything(listed, CreationTimeAfter=T0 + 7) == ["Name-8", "Name-9"]  # bounds are exclusive
    assert everything(listed, CreationTimeBefore=ts(T0 + 2)) == ["Name-0", "Name-1"]
    assert everything(listed, LastModifiedTimeAfter=T0 + 150) == ["Name-3", "Name-5"]
    assert everything(listed, LastModifiedTimeBefore=T0 + 150, CreationTimeAfter=T0 + 6) == [
        "Name-7", "Name-8", "Name-9"]


def test_list_sort_orders(listed):
    assert everything(listed, SortOrder="Descending") == [f"Name-{i}" for i in reversed(range(10))]
    assert everything(listed, SortBy="Name", SortOrder="Descending")[:2] == ["Name-9", "Name-8"]
    by_status = everything(listed, SortBy="Status")
    assert by_status[0] == "Name-3" and by_status[1] == "Name-5" and by_status[-1] == "Name-7"
    page, _ = listed.list(ACCOUNT, validate_list_request({"SortBy": "Status", "MaxResults": 100}))
    assert [j.status for j in page] == sorted(j.status for j in page)


@pytest.mark.parametrize("order", ["Ascending", "Descending"])
def test_pagination_returns_each_job_once_in_order_despite_inserts(store, order):
    for i in range(25):
        store.create(make_job(f"job-{i:02d}", at=T0 + i))
    expected = [f"job-{i:02d}" for i in range(25)]
    expected = expected if order == "Ascending" else expected[::-1]
    seen, token, pages = [], None, 0
    while True:
        names, token = listing(store, MaxResults=7, SortOrder=order, **({"NextToken": token} if token else {}))
        seen += names
        pages += 1
        if pages == 2:  # a job created between pages goes after all older ones
            store.create(make_job("late", at=T0 + 1000))
            store.update_status(ACCOUNT, expected[-1], {STARTING}, FAILED, failure_reason="x")
            store.delete(ACCOUNT, expected[-1])
        if not token:
            break
    kept = expected[:-1]
    assert seen == (kept + ["late"] if order == "Ascending" else kept)
    assert pages == 4


def test_next_token_works_with_botocores_paginator(store):
    for i in range(25):
        store.create(make_job(f"job-{i:02d}", at=T0 + i))

    def list_compilation_jobs(**params):
        page, token = store.list(ACCOUNT, validate_list_request(params))
        return {"CompilationJobSummaries": [summary(j) for j in page], **({"NextToken": token} if token else {})}

    operation = service_model().operation_model("ListCompilationJobs")
    config = botocore.session.get_session().get_paginator_model("sagemaker").get_paginator("ListCompilationJobs")
    pages = list(Paginator(list_compilation_jobs, config, operation)
                 .paginate(SortBy="Name", PaginationConfig={"PageSize": 7}))
    assert [len(p["CompilationJobSummaries"]) for p in pages] == [7, 7, 7, 4]
    assert [s["CompilationJobName"] for p in pages for s in p["CompilationJobSummaries"]] == [
        f"job-{i:02d}" for i in range(25)]


def test_bad_tokens_are_refused(store):
    for i in range(3):
        store.create(make_job(f"job-{i}", at=T0 + i))
    _, token = listing(store, MaxResults=1)
    with pytest.raises(InvalidToken):
        listing(store, MaxResults=1, SortBy="Name", NextToken=token)
    for bad in ("garbage!", "eyJrIjoxfQ", token[:-3]):
        with pytest.raises(InvalidToken):
            listing(store, NextToken=bad)


# ---- tags --------------------------------------------------------------------------------------------

def test_tags_add_overwrite_page_and_delete(store):
    store.create(make_job("job", tags={"a": "1"}))
    store.add_tags(ACCOUNT, "job", {"a": "2", **{f"k{i:02d}": str(i) for i in range(10)}})
    page, token = store.list_tags(ACCOUNT, "job", max_results=4)
    assert list(page) == ["a", "k00", "k01", "k02"] and page["a"] == "2"
    seen = dict(page)
    while token:
        page, token = store.list_tags(ACCOUNT, "job", max_results=4, next_token=token)
        seen.update(page)
    assert len(seen) == 11
    store.delete_tags(ACCOUNT, "job", ["a", "k05", "missing"])
    assert "a" not in store.get(ACCOUNT, "job").tags and len(store.get(ACCOUNT, "job").tags) == 9
    with pytest.raises(TagLimitExceeded):
        store.add_tags(ACCOUNT, "job", {f"n{i}": "" for i in range(42)})
    store.add_tags(ACCOUNT, "job", {f"n{i}": "" for i in range(41)})
    assert len(store.get(ACCOUNT, "job").tags) == 50


# ---- worker leases -----------------------------------------------------------------------------------

def _claim_all(url: str, worker: str, start: multiprocessing.synchronize.Barrier,
               results: multiprocessing.queues.Queue) -> None:
    with JobStore(url, migrate=False) as store:
        names = []
        start.wait(60)  # both workers connected: now they race
        while (job := store.claim_next(worker, 60)) is not None:
            names.append(job.name)
            time.sleep(0.05)  # "work", so the two claim loops interleave even on a loaded machine
        results.put((worker, names))


def test_concurrent_workers_never_claim_the_same_job(store, store_url):
    for i in range(20):
        store.create(make_job(f"job-{i:02d}", at=T0 + i))
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(2), spawn.Queue()
    workers = [spawn.Process(target=_claim_all, args=(store_url, w, start, results)) for w in ("w1", "w2")]
    for p in workers:
        p.start()
    claimed = dict(results.get(timeout=60) for _ in workers)
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    everyone = claimed["w1"] + claimed["w2"]
    assert sorted(everyone) == [f"job-{i:02d}" for i in range(20)]  # each job exactly once
    assert claimed["w1"] and claimed["w2"], claimed
    for worker, names in claimed.items():
        assert names == sorted(names)  # each worker took the oldest left
        assert {store.get(ACCOUNT, n).lease_owner for n in names} == {worker}


def test_leases_renew_lapse_retry_then_fail(store):
    store.create(make_job("job"))
    store.claim_next("w1", 10, now=T0)
    renewed = store.renew_lease(ACCOUNT, "job", "w1", 10, now=T0 + 8)
    assert renewed.lease_expires == T0 + 18 and renewed.last_modified_time == T0
    with pytest.raises(LeaseLost):
        store.renew_lease(ACCOUNT, "job", "w2", 10, now=T0 + 8)
    assert store.recover_expired_leases(now=T0 + 17) == []
    [requeued] = store.recover_expired_leases(now=T0 + 19)
    assert (requeued.status, requeued.attempts, requeued.lease_owner) == (STARTING, 1, None)
    with pytest.raises(LeaseLost):  # the vanished worker comes back: it no longer owns the job
        store.update_status(ACCOUNT, "job", {INPROGRESS}, COMPLETED, lease_owner="w1")
    again = store.claim_next("w2", 10, now=T0 + 20)
    assert (again.name, again.attempts, again.start_time) == ("job", 2, T0 + 20)
    [failed] = store.recover_expired_leases(now=T0 + 31)
    assert failed.status == FAILED and "w2" in failed.failure_reason and "lease" in failed.failure_reason
    assert f"detected at {datetime.fromtimestamp(T0 + 31, UTC):%Y-%m-%d %H:%M:%S} UTC" in failed.failure_reason
    assert store.get(ACCOUNT, "job") == failed


def test_lapsed_lease_of_a_stopping_job_stops_it(store):
    store.create(make_job("job"))
    store.claim_next("w1", 10, now=T0)
    store.request_stop(ACCOUNT, "job", now=T0 + 1)
    assert store.renew_lease(ACCOUNT, "job", "w1", 10, now=T0 + 2).stop_requested
    [stopped] = store.recover_expired_leases(now=T0 + 13)
    assert (stopped.status, stopped.end_time) == (STOPPED, T0 + 13)


def test_pending_jobs_expire_after_max_pending_time(store):
    store.create(make_job("limited", max_pending=1800))
    store.create(make_job("patient", at=T0 + 1))
    assert store.expire_pending(now=T0 + 1800) == []
    claimed = store.claim_next("w", 60, now=T0 + 1801)  # the limited job is past its deadline: skipped
    assert claimed.name == "patient"
    [failed] = store.expire_pending(now=T0 + 1801)
    assert failed.name == "limited" and failed.status == FAILED
    assert "MaxPendingTimeInSeconds" in failed.failure_reason and "1800" in failed.failure_reason
    assert store.get(ACCOUNT, "limited").end_time == T0 + 1801


# ---- durability and migrations -----------------------------------------------------------------------

def test_state_survives_a_restart(store, store_url):
    store.create(make_job("a", tags={"k": "v"}))
    store.create(make_job("b", at=T0 + 1))
    store.claim_next("w", 60, now=T0 + 2)
    before = [store.get(ACCOUNT, n) for n in ("a", "b")]
    store.close()
    with JobStore(store_url) as reopened:
        assert [reopened.get(ACCOUNT, n) for n in ("a", "b")] == before
        assert reopened.claim_next("w", 60).name == "b"


def test_migrate_fresh_then_idempotently(store_url):
    engine = database.open_engine(store_url)
    assert database.current_revision(engine) is None
    fresh = JobStore(store_url, migrate=False)
    assert not sa.inspect(fresh.engine).has_table("compilation_jobs")
    fresh.migrate()
    assert database.current_revision(engine) == database.head_revision()
    fresh.create(make_job("kept"))
    fresh.migrate()
    fresh.close()
    with JobStore(store_url) as again:
        assert again.get(ACCOUNT, "kept").name == "kept"
    engine.dispose()


def _open_and_report_revision(url: str) -> str | None:
    with JobStore(url) as opened:
        return database.current_revision(opened.engine)


def test_replicas_starting_together_migrate_once(store_url):
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # two servers opening one new database at once
        assert set(pool.map(_open_and_report_revision, [store_url] * 2)) == {database.head_revision()}


def test_migrated_schema_matches_schema_py(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "version_table": database.VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
        assert {c.name for c in jobs.columns} == {c["name"] for c in sa.inspect(conn).get_columns("compilation_jobs")}


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    with JobStore(f"sqlite:///{tmp_path / 'kiln.db'}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == database.BUSY_TIMEOUT_MS

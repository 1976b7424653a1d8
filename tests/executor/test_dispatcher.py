"""The dispatcher against a real job store: what it submits, and what it fails or recovers."""
from __future__ import annotations

import os
import time
from concurrent.futures import Future

import pytest

from modelkiln.executor import Dispatcher
from modelkiln.jobs.model import FAILED, INPROGRESS, STARTING
from modelkiln.jobs.store import JobStore
from tests.jobs.factories import make_job


def recorder(submitted: list[tuple[int, int]], finished: bool = False):
    """A submit that records (job id, attempt) and returns a task that is still running (or already done)."""
    def submit(job_id: int, attempt: int) -> Future:
        submitted.append((job_id, attempt))
        task: Future = Future()
        if finished:
            task.set_result("not claimed")
        return task
    return submit


def _store(tmp_path) -> JobStore:
    return JobStore(f"sqlite:///{tmp_path / 'kiln.db'}")


def test_each_starting_job_is_submitted_once_per_attempt(tmp_path):
    store = _store(tmp_path)
    now = time.time()
    first = store.create(make_job("first", at=now))
    second = store.create(make_job("second", at=now + 1))
    submitted: list[tuple[int, int]] = []
    dispatcher = Dispatcher(store, recorder(submitted))
    dispatcher.tick()
    dispatcher.tick()
    assert submitted == [(first.id, 0), (second.id, 0)]
    # a worker claims the first and vanishes: once its lease lapses it is queued again, as a new attempt
    claimed = store.claim_next("gone:1:x", lease_s=0.01, job_id=first.id)
    assert claimed is not None and claimed.status == INPROGRESS
    time.sleep(0.05)
    dispatcher.tick()
    assert store.get(first.account_id, "first").status == STARTING
    assert submitted[-1] == (first.id, 1)


def test_a_restarted_dispatcher_submits_the_queue_again(tmp_path):
    store = _store(tmp_path)
    job = store.create(make_job("queued", at=time.time()))
    before: list[tuple[int, int]] = []
    Dispatcher(store, recorder(before)).tick()
    after: list[tuple[int, int]] = []
    Dispatcher(store, recorder(after)).tick()
    assert before == after == [(job.id, 0)]


def test_a_task_that_ended_without_claiming_its_job_is_resubmitted(tmp_path):
    store = _store(tmp_path)
    job = store.create(make_job("unlucky", at=time.time()))
    submitted: list[tuple[int, int]] = []
    dispatcher = Dispatcher(store, recorder(submitted, finished=True))
    dispatcher.tick()
    dispatcher.tick()
    assert submitted == [(job.id, 0), (job.id, 0)]


def test_jobs_queued_past_max_pending_time_fail(tmp_path):
    store = _store(tmp_path)
    store.create(make_job("waited", at=time.time() - 4000, max_pending=1800))
    submitted: list[tuple[int, int]] = []
    Dispatcher(store, recorder(submitted)).tick()
    job = store.get("111111111111", "waited")
    assert job.status == FAILED and "MaxPendingTimeInSeconds" in job.failure_reason and submitted == []


def test_a_failing_tick_does_not_end_the_loop(tmp_path):
    store = _store(tmp_path)
    store.create(make_job("retried", at=time.time()))
    calls: list[int] = []

    def flaky_submit(job_id: int, attempt: int) -> Future:
        calls.append(job_id)
        if len(calls) == 1:
            raise ConnectionError("scheduler not reachable yet")
        return Future()

    dispatcher = Dispatcher(store, flaky_submit, tick_s=0.05)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    assert len(calls) == 2  # the failed submit was retried on the next tick


def test_jobs_of_a_dead_local_worker_are_recovered_before_their_lease_ends(tmp_path):
    import socket
    import subprocess
    import sys

    store = _store(tmp_path)
    job = store.create(make_job("orphaned", at=time.time()))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_worker = f"{socket.gethostname()}:{gone.stdout.strip()}:nonce"
    store.claim_next(dead_worker, lease_s=3600, job_id=job.id)
    alive = store.create(make_job("still-running", at=time.time()))
    store.claim_next(f"{socket.gethostname()}:{os.getpid()}:nonce", lease_s=3600, job_id=alive.id)
    submitted: list[tuple[int, int]] = []
    Dispatcher(store, recorder(submitted)).tick()
    assert store.get("111111111111", "orphaned").status == STARTING and submitted == [(job.id, 1)]
    assert store.get("111111111111", "still-running").status == INPROGRESS


def test_a_task_carries_only_the_job_id_and_workers_read_their_own_configuration():
    from types import SimpleNamespace

    from modelkiln.executor import DaskExecutor, WorkerConfig, run_job

    executor = DaskExecutor(env={"KILN_OBJECTS_URL": "http://KEY:SECRET@objects:9000"})
    sent = []
    executor.client = SimpleNamespace(submit=lambda fn, *args, key: sent.append((fn, args)))
    executor.submit(7, 1)
    assert sent == [(run_job, (7,))]  # nothing of the stores' addresses or credentials travels with a task
    config = WorkerConfig.from_environ({"KILN_STORE_URL": "sqlite:///x.db", "KILN_OBJECTS_URL": "/srv/objects",
                                        "KILN_JOB_MEMORY_MB": "150"})
    assert (config.store_url, config.objects_url, config.job_memory_mb) == ("sqlite:///x.db", "/srv/objects", 150)
    with pytest.raises(RuntimeError, match="KILN_STORE_URL or KILN_OBJECTS_URL.*kiln worker"):
        WorkerConfig.from_environ({})

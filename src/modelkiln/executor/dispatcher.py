"""The loop in `kiln serve` that turns the job store's STARTING jobs into Dask tasks, and keeps the store honest.

Each tick: jobs whose worker vanished (lapsed lease) are retried or failed, queued jobs past their
MaxPendingTimeInSeconds are failed, and every STARTING job not yet handed to Dask is submitted; so is every
inference job waiting for its comparison with the source model (compare.py). After a
restart nothing is remembered, so every STARTING job is submitted again; a duplicate task finds its job no
longer STARTING and returns (the claim is a compare-and-set in the store).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from modelkiln.devices.store import DeviceStore
from modelkiln.jobs.store import JobStore

log = logging.getLogger("kiln.executor")
TICK_S = 1.0

class Handle(Protocol):
    """A submitted task (a Dask future)."""

    def done(self) -> bool: ...


Submit = Callable[[int, int], Handle]  # (job id, attempt) -> the task running it
SubmitComparison = Callable[[int], Handle]  # device job id -> the task comparing its outputs


def local_worker_gone(worker_id: str) -> bool:
    """Whether a worker id (host:pid:nonce, see runner.py) names a process of this host that no longer exists:
    then its jobs need not wait out their lease (a server restarted after a crash picks them up at once).
    A reused pid only delays that to the lease's end."""
    host, _, rest = worker_id.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Dispatcher:
    def __init__(self, store: JobStore, submit: Submit, compare: SubmitComparison | None = None,
                 tick_s: float = TICK_S) -> None:
        self.store, self.submit, self.compare, self.tick_s = store, submit, compare, tick_s
        self.devices = DeviceStore(store.engine)
        self._submitted: dict[tuple[int, int], Handle] = {}
        self._comparing: dict[int, Handle] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kiln-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)

    def wake(self) -> None:
        """Look at the store now (a job was created or stopped)."""
        self._wake.set()

    def tick(self) -> None:
        for job in self.store.recover_expired_leases(is_dead=local_worker_gone):
            log.warning("job %s/%s: worker lease lapsed -> %s", job.account_id, job.name, job.status)
        for job in self.store.expire_pending():
            log.info("job %s/%s: waited past MaxPendingTimeInSeconds -> FAILED", job.account_id, job.name)
        # A finished task whose job is still STARTING never claimed it (it failed first, e.g. the worker could not
        # reach the store): forget it, so the job is submitted again rather than left waiting forever.
        self._submitted = {key: task for key, task in self._submitted.items() if not task.done()}
        for job in self.store.starting():
            assert job.id is not None
            key = (job.id, job.attempts)
            if key not in self._submitted:
                self._submitted[key] = self.submit(job.id, job.attempts)
        if self.compare is not None:
            self.devices.expire()  # a comparison whose worker died completes, uncompared, saying so
            self._comparing = {key: task for key, task in self._comparing.items() if not task.done()}
            for device_job_id in self.devices.comparisons_waiting():
                if device_job_id not in self._comparing:
                    self._comparing[device_job_id] = self.compare(device_job_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the loop; the next tick retries
                log.exception("dispatcher tick failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

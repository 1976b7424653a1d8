"""The Dask side: a LocalCluster of worker processes by default, or a client of an external scheduler.

Each worker thread runs one job at a time (threads_per_worker=1); the heavy work is in the job's sandboxed
child process, so Dask's own memory management is turned off (memory_limit=0) and never kills a worker.
"""
from __future__ import annotations

import logging
from typing import Any

from modelkiln.executor.compare import run_comparison
from modelkiln.executor.runner import run_job

log = logging.getLogger("kiln.executor")


class DaskExecutor:
    def __init__(self, scheduler: str = "", workers: int = 1, *, env: dict[str, str] | None = None,
                 security: Any = None) -> None:
        """`env`: the local workers' configuration (see runner.WorkerConfig); `security`: Dask TLS for an
        external scheduler (its workers are configured by `kiln worker`)."""
        self.scheduler, self.workers, self.env, self.security = scheduler, workers, env or {}, security
        self.client: Any = None
        self.cluster: Any = None
        self._submissions = 0

    def start(self) -> None:
        from distributed import Client, LocalCluster

        if self.scheduler:
            self.client = Client(self.scheduler, timeout="30s", security=self.security)
        else:
            # Loopback only; the scheduler's HTTP server always starts, so give it any free port.
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", memory_limit=0, dashboard_address="127.0.0.1:0",
                                        silence_logs=logging.WARNING, env=self.env)
            self.client = Client(self.cluster)
        log.info("Dask executor: %s", self.client.scheduler_info().get("address", self.scheduler))

    def submit(self, job_id: int, attempt: int) -> Any:
        """Queue run_job for the job; the future (held by the dispatcher, which keeps the task alive)."""
        # The key names the attempt, so a retried job gets a new task, and a resubmitted one a fresh key.
        self._submissions += 1
        # Only the job's id travels: the worker reads the stores' addresses from its own configuration.
        return self.client.submit(run_job, job_id, key=f"kiln-job-{job_id}-{attempt}-{self._submissions}")

    def submit_comparison(self, device_job_id: int) -> Any:
        """Queue run_comparison for an inference job whose device outputs are in."""
        self._submissions += 1
        return self.client.submit(run_comparison, device_job_id,
                                  key=f"kiln-compare-{device_job_id}-{self._submissions}")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

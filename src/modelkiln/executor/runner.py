"""One job on one worker: claim it, run its sandboxed child, watch it, and record how it ended.

This is the function Dask runs (`run_job(config, job_id)`); it needs only the job store and the object store
named in `config`, so it runs the same in a LocalCluster worker and on another machine.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from modelkiln.executor import sandbox
from modelkiln.executor.spec import JobSpec
from modelkiln.jobs.errors import JobError, LeaseLost, StatusConflict
from modelkiln.jobs.model import COMPLETED, FAILED, INPROGRESS, STOPPED, STOPPING, Job
from modelkiln.jobs.store import JobStore

LEASE_S = 30.0  # a worker that has not renewed for this long is presumed dead (see jobs/leases.py)
RENEW_EVERY_S = 5.0
POLL_S = 0.5  # how often the child's output is copied to the log and a stop request looked for
CPU_SLACK = 4  # RLIMIT_CPU = this x MaxRuntimeInSeconds: several threads burn CPU time faster than the clock


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to run any job (sent with each Dask task, so workers need no settings of their own)."""

    store_url: str
    objects_url: str
    job_memory_mb: int = 8192
    job_file_size_mb: int = 4096


def run_job(config: WorkerConfig, job_id: int) -> str:
    """Run job `job_id` if it is still STARTING; returns its final status (or why it was not run)."""
    store = JobStore(config.store_url, migrate=False)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        job = store.claim_next(worker_id, LEASE_S, job_id=job_id)
        if job is None:
            return "not claimed: no longer STARTING"
        return _Supervisor(store, config, job, worker_id).run()
    finally:
        store.close()


class _Supervisor:
    def __init__(self, store: JobStore, config: WorkerConfig, job: Job, worker_id: str) -> None:
        self.store, self.config, self.job, self.worker_id = store, config, job, worker_id
        assert job.id is not None
        self.job_id = job.id
        runtime = int(job.stopping_condition.get("MaxRuntimeInSeconds") or 900)
        self.runtime_s = runtime
        self.limits = sandbox.Limits(config.job_memory_mb * 2**20, config.job_file_size_mb * 2**20,
                                     CPU_SLACK * runtime + 60)
        self.work = _scratch() / f"job-{job.id}-{job.attempts}-{worker_id.rsplit(':', 1)[-1]}"
        self.lines: queue.Queue[str] = queue.Queue()

    def run(self) -> str:
        self.log(f"kiln: job {self.job.name} claimed by worker {self.worker_id} (attempt {self.job.attempts})")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        try:
            spec = self._spec()
            spec.write(self.work / "spec.json")
            child = sandbox.start([sys.executable, "-m", "modelkiln.executor.job_main", str(self.work / "spec.json")],
                                  self.limits, env=_child_env())
            pump = threading.Thread(target=self._pump, args=(child,), daemon=True)
            pump.start()
            return self._watch(child, pump, spec)
        except LeaseLost:
            self.log("kiln: this worker lost the job's lease; another worker or the recovery took it over")
            return "lease lost"
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def _spec(self) -> JobSpec:
        inp, out = self.job.input_config, self.job.output_config
        return JobSpec(
            account_id=self.job.account_id, input_uri=inp["S3Uri"], framework=inp["Framework"],
            output_location=out["S3OutputLocation"], objects_url=self.config.objects_url, work_dir=str(self.work),
            data_input_config=inp.get("DataInputConfig"), framework_version=inp.get("FrameworkVersion"),
            target_device=out.get("TargetDevice"),
            target_platform=out.get("TargetPlatform"), compiler_options=out.get("CompilerOptions"),
            kms_key_id=out.get("KmsKeyId"),
        )

    def _watch(self, child, pump: threading.Thread, spec: JobSpec) -> str:
        deadline = (self.job.start_time or time.time()) + self.runtime_s
        next_renew = time.monotonic() + RENEW_EVERY_S
        while child.poll() is None:
            time.sleep(POLL_S)
            self._flush()
            if time.monotonic() >= next_renew:
                self.store.renew_lease(self.job.account_id, self.job.name, self.worker_id, LEASE_S)
                next_renew = time.monotonic() + RENEW_EVERY_S
            if self._status() == STOPPING:
                self.log("kiln: StopCompilationJob received; stopping the compiler (SIGTERM, then SIGKILL)")
                sandbox.kill(child)
                return self._finish(STOPPED, {STOPPING})
            if time.time() > deadline:
                sandbox.kill(child)
                return self._finish(FAILED, {INPROGRESS}, failure_reason=(
                    f"ClientError: StoppingCondition.MaxRuntimeInSeconds: the job reached its limit of "
                    f"{self.runtime_s} s and was stopped. Raise MaxRuntimeInSeconds (compiling for several "
                    "backends and verifying each can take minutes for large models), or pin one backend with "
                    "CompilerOptions {\"kiln-backend\": ...}."))
        pump.join(10)  # every line the child wrote is in the log before the job ends
        self._flush()
        result = _read_result(spec.result_path)
        if result is None:
            return self._finish(FAILED, {INPROGRESS}, failure_reason=(
                f"ClientError: {sandbox.describe_exit(child.returncode, self.limits)}. Compile a smaller model, "
                "or ask the Kiln operator to raise the job limits (job_memory_mb, job_file_size_mb)."))
        if result["ok"]:
            return self._finish(COMPLETED, {INPROGRESS}, artifact_uri=result["artifact_uri"],
                                artifact_digest=result["artifact_digest"],
                                derived_data_input_config=result["derived_data_input_config"])
        return self._finish(FAILED, {INPROGRESS}, failure_reason=result["reason"])

    def _finish(self, status: str, expected: set[str], **fields: str) -> str:
        """Record the outcome; a stop that raced the child's last moments still wins (the user asked for it)."""
        try:
            job = self.store.update_status(self.job.account_id, self.job.name, expected, status,
                                           lease_owner=self.worker_id, **fields)
        except StatusConflict as exc:
            if exc.current != STOPPING:
                raise
            job = self.store.update_status(self.job.account_id, self.job.name, {STOPPING}, STOPPED,
                                           lease_owner=self.worker_id)
        self.log(f"kiln: job {job.status}" + (f": {job.failure_reason}" if job.failure_reason else ""))
        return job.status

    def _status(self) -> str | None:
        job = self.store.get_by_id(self.job_id)
        return job.status if job else None

    def _pump(self, child) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            self.lines.put(line.rstrip("\n"))

    def _flush(self) -> None:
        batch = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            batch.append(line)
        if batch:
            try:
                self.store.append_log(self.job_id, batch)
            except JobError:
                pass  # the record was deleted under us; the work goes on regardless

    def log(self, line: str) -> None:
        self.store.append_log(self.job_id, [line])


def _read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _scratch() -> Path:
    """Scratch space on the worker's own machine: $KILN_WORK_DIR, else the system temp dir."""
    return Path(os.environ.get("KILN_WORK_DIR") or tempfile.gettempdir()) / "kiln-jobs"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env

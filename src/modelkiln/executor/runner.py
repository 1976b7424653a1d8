"""One job on one worker: claim it, run its sandboxed child, watch it, and record how it ended.

This is the function Dask runs (`run_job(job_id)`); it needs only the job store and the object store named in
the worker's own configuration, so it runs the same in a LocalCluster worker and on another machine. The
supervisor (this process) holds the credentials: it fetches the model and uploads the artifact; the sandboxed
child in between sees neither the stores nor the network.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import platform
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from modelkiln.errors import CompilationError, KilnError, failure_reason
from modelkiln.devices.store import DeviceStore
from modelkiln.executor import on_device, sandbox, scratch
from modelkiln.executor.spec import JobSpec, artifact_name, compiler_option
from modelkiln.jobs.errors import JobError, LeaseLost, StatusConflict
from modelkiln.jobs.model import COMPLETED, FAILED, INPROGRESS, STOPPED, STOPPING, Job
from modelkiln.jobs.store import JobStore
from modelkiln.storage import download_file, open_store, parse_s3_uri, upload_file

T = TypeVar("T")

LEASE_S = 30.0  # a worker that has not renewed for this long is presumed dead (see jobs/leases.py)
RENEW_EVERY_S = 5.0
POLL_S = 0.5  # how often the child's output is copied to the log and a stop request looked for
CPU_SLACK = 4  # RLIMIT_CPU = this x MaxRuntimeInSeconds: several threads burn CPU time faster than the clock
RESULT = "result.json"
MAX_RESULT_BYTES = 1 << 20  # the child's result is hostile input too
MAX_REASON = 4096
TAIL_LINES = 40  # the child's last lines, searched for an out-of-memory message when it dies
MAX_LOG_BYTES, MAX_LINE = 4 << 20, 8192  # of the child's output kept in the job log


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to run any job: its own configuration, in its environment (`kiln serve` sets it
    for its local workers, `kiln worker` from its settings), never sent with a task."""

    store_url: str
    objects_url: str
    job_memory_mb: int = 8192
    job_file_size_mb: int = 4096

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> WorkerConfig:
        missing = [name for name in ("KILN_STORE_URL", "KILN_OBJECTS_URL") if not env.get(name)]
        if missing:
            raise RuntimeError(f"this Dask worker has no {' or '.join(missing)}: start workers with `kiln worker`, "
                               "which sets them from its settings")
        return cls(env["KILN_STORE_URL"], env["KILN_OBJECTS_URL"], int(env.get("KILN_JOB_MEMORY_MB") or 8192),
                   int(env.get("KILN_JOB_FILE_SIZE_MB") or 4096))


def run_job(job_id: int, config: WorkerConfig | None = None) -> str:
    """Run job `job_id` if it is still STARTING; returns its final status (or why it was not run)."""
    config = config or WorkerConfig.from_environ(os.environ)
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
        self.work = scratch.job_dir(f"{job.id}-{job.attempts}", worker_id.rsplit(":", 1)[-1])
        self.jail = sandbox.Jail(self.work, sandbox.job_uid(job.id), sandbox.child_env())
        self.lines: queue.Queue[str] = queue.Queue()
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.child: sandbox.Child | None = None
        self.timing = on_device.Timing(None)

    def run(self) -> str:
        self.log(f"kiln: job {self.job.name} claimed by worker {self.worker_id} (attempt {self.job.attempts})")
        scratch.sweep()
        with scratch.held(self.work):
            try:
                sandbox.prepare(self.work, self.jail.uid)
                return self._run()
            except LeaseLost:
                self.log(f"kiln: this worker lost the job's lease (detected at {_utc(time.time())}); another "
                         "worker or the recovery took it over")
                return "lease lost"
            finally:
                if self.child is not None and self.child.poll() is None:
                    sandbox.kill(self.child, grace_s=0)  # never leave a compile behind, whatever ended the watch

    def _run(self) -> str:
        fetched = self._renewing(self._fetch)
        if isinstance(fetched, str):
            return self._finish(FAILED, {INPROGRESS}, failure_reason=fetched)
        self.timing = on_device.timing_device(DeviceStore(self.store.engine), self.job, platform.machine())
        if self.timing.auto:
            self.log(f"profile: {self.timing.why}")
        spec = self._spec(*fetched)
        spec.write(self.work / "spec.json")
        (self.work / "spec.json").chmod(0o644)  # written as the worker, read as the job's uid
        self.child = sandbox.start([sys.executable, "-m", "modelkiln.executor.job_main", "/job/spec.json"],
                                   self.limits, self.jail)
        pump = threading.Thread(target=self._pump, args=(self.child,), daemon=True)
        pump.start()
        return self._watch(self.child, pump)

    def _fetch(self) -> tuple[Path, Path | None] | str:
        """The job's model, and the calibration data kiln-calibration names, downloaded into its directory for the
        child to read; or why they cannot be."""
        uri = self.job.input_config["S3Uri"]
        model = self._download(uri, "InputConfig.S3Uri", None, "upload the model there, or correct S3Uri")
        if isinstance(model, str):
            return model
        data_uri = compiler_option(self.job.output_config.get("CompilerOptions"), "kiln-calibration")
        if data_uri is None:
            return model, None
        data = self._download(data_uri, "CompilerOptions kiln-calibration", "calibration-data.npz",
                              "upload the .npz there (one array per input name, first axis = samples), or correct "
                              "kiln-calibration")
        return data if isinstance(data, str) else (model, data)

    def _download(self, uri: str, field: str, name: str | None, hint: str) -> Path | str:
        self.log(f"fetch: downloading {uri}")
        try:
            source = parse_s3_uri(uri)
            local = self.work / (name or source.key.rsplit("/", 1)[-1] or "model.tar.gz")
            download_file(open_store(self.config.objects_url), self.job.account_id, source.bucket, source.key, local)
        except KilnError as exc:
            return failure_reason(CompilationError("fetch", f"cannot read {field} {uri}: {exc}",
                                                   f"{hint}, and create the job again"))
        local.chmod(0o644)
        return local

    def _choose_on_device(self, device: str, deadline: float) -> Path:
        """The candidate the device timed fastest, with a report that says so (on_device.py)."""
        found = on_device.candidates(self.work / "out" / "candidates")
        if not found:
            raise on_device.NotTimed("ServerError: the compile reported success but packaged no candidate for "
                                     "kiln-profile-on; the job log has its output.")
        devices = DeviceStore(self.store.engine)
        facts = devices.get_device(self.job.account_id, device).facts
        timed = on_device.time_on_device(devices, open_store(self.config.objects_url), self.job, device, found,
                                         deadline, lambda: self._status() != STOPPING, self.log)
        if not timed:  # a stop was asked for meanwhile
            return self.work / "out" / "model.tar.gz"
        winner = on_device.fastest(device, timed)
        how = on_device.selection(device, facts, winner, timed) + (f" ({self.timing.why})" if self.timing.auto else "")
        self.log(f"profile: {how}")
        return on_device.with_report(winner.artifact, self.work / "model-on-device.tar.gz",
                                     lambda report: on_device.device_report(report, device, winner, timed, how))

    def _upload(self, result: dict, artifact: Path) -> dict[str, str] | str:
        """The artifact written to S3OutputLocation; its job fields, or why it was not."""
        out = self.job.output_config
        destination = parse_s3_uri(out["S3OutputLocation"]).join(
            artifact_name(self.job.input_config["S3Uri"], out.get("TargetDevice"), out.get("TargetPlatform")))
        # The child is gone (its PID namespace with it), so nothing can swap these paths after this check; a
        # link would have the supervisor upload a file of its own choosing.
        if any(p.is_symlink() for p in (artifact.parent, artifact)) or not artifact.is_file():
            return "ServerError: the compile reported success but left no artifact; the job log has its output."
        self.log(f"upload: writing {destination}")
        try:
            upload_file(open_store(self.config.objects_url), self.job.account_id, artifact, destination.bucket,
                        destination.key, content_type="application/gzip", sse_kms_key_id=out.get("KmsKeyId"))
        except KilnError as exc:
            return failure_reason(CompilationError(
                "upload", f"cannot write the artifact to {destination}: {exc}",
                "create that bucket, or correct OutputConfig.S3OutputLocation, and create the job again"))
        return {"artifact_uri": str(destination), "artifact_digest": sha256_of(artifact),
                "derived_data_input_config": str(result.get("derived_data_input_config") or "")}

    def _spec(self, model: Path, calibration: Path | None) -> JobSpec:
        inp, out = self.job.input_config, self.job.output_config
        return JobSpec(
            framework=inp["Framework"], model_path=str(self.jail.inside(model)),
            calibration_path=str(self.jail.inside(calibration)) if calibration else None,
            candidates_dir=str(sandbox.JOB_ROOT / "out" / "candidates") if self.timing.device else None,
            output_dir=str(sandbox.JOB_ROOT / "out"), result_path=str(sandbox.JOB_ROOT / RESULT),
            data_input_config=inp.get("DataInputConfig"), framework_version=inp.get("FrameworkVersion"),
            target_device=out.get("TargetDevice"),
            target_platform=out.get("TargetPlatform"), compiler_options=out.get("CompilerOptions"),
        )

    def _renewing(self, work: Callable[[], T]) -> T:
        """work() in a thread, while this one keeps the job's lease (a large model takes a while to move)."""
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(work)
            while not wait([future], timeout=RENEW_EVERY_S).done:
                self.store.renew_lease(self.job.account_id, self.job.name, self.worker_id, LEASE_S)
            return future.result()

    def _watch(self, child: sandbox.Child, pump: threading.Thread) -> str:
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
        result = read_result(self.work / RESULT)
        if result is None:
            assert child.returncode is not None
            reason = sandbox.describe_exit(child.returncode, self.limits, child.peak_rss_bytes, self.tail)
            return self._finish(FAILED, {INPROGRESS}, failure_reason=reason)
        if not result.get("ok"):
            return self._finish(FAILED, {INPROGRESS}, failure_reason=str(result.get("reason"))[:MAX_REASON])
        artifact = self.work / "out" / "model.tar.gz"
        device = self.timing.device
        if device:
            until = min(deadline, time.time() + on_device.AUTO_WAIT_S) if self.timing.auto else deadline
            try:
                artifact = self._renewing(lambda: self._choose_on_device(device, until))
            except (on_device.NotTimed, KilnError) as exc:
                reason = str(exc) if isinstance(exc, on_device.NotTimed) else failure_reason(exc)
                if not self.timing.auto:
                    return self._finish(FAILED, {INPROGRESS}, failure_reason=reason[:MAX_REASON])
                self.log(f"profile: not timed on device {device}, so the compile's own choice ships: {reason}")
                artifact = self._renewing(lambda: on_device.with_report(
                    artifact, self.work / "model-noted.tar.gz", lambda r: on_device.not_timed_note(r, device, reason)))
            if self._status() == STOPPING:
                return self._finish(STOPPED, {STOPPING})
        fields = self._renewing(lambda: self._upload(result, artifact))
        if isinstance(fields, str):
            return self._finish(FAILED, {INPROGRESS}, failure_reason=fields)
        return self._finish(COMPLETED, {INPROGRESS}, **fields)

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

    def _pump(self, child: sandbox.Child) -> None:
        """Copy the child's output to the log, up to MAX_LOG_BYTES (a hostile model could flood the job store);
        past that the output is still drained, so the child never blocks on a full pipe."""
        assert child.stdout is not None
        logged = 0
        for line in child.stdout:
            self.tail.append(line)
            line = line.rstrip("\n")[:MAX_LINE]
            logged += len(line) + 1
            if logged <= MAX_LOG_BYTES:
                self.lines.put(line)
            elif logged - len(line) - 1 <= MAX_LOG_BYTES:
                self.lines.put(f"kiln: the compiler's output passed {MAX_LOG_BYTES >> 20} MB; the rest is not logged")

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


def read_result(path: Path) -> dict | None:
    """The child's RESULT.json: a plain file of its directory (never a link it planted), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            result = json.loads(f.read(MAX_RESULT_BYTES))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

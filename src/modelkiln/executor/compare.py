"""An inference job's comparison: the device's outputs against the source framework's on the same inputs.

    device's agent reports COMPLETED  -> the job is COMPARING (its artifact is one a compile job of the account wrote)
    dispatcher (in `kiln serve`)       -> Dask task run_comparison(device job id) on any worker
    run_comparison (the supervisor, holding the worker's own store credentials):
        claim the comparison (a lease it renews) -> the compile job that wrote the artifact
        -> download the artifact (its SHA-256 must be the one that compile recorded), the compile's source model,
           the job's inputs and the device's outputs
        -> sandboxed `python -m modelkiln.executor.reference_main`: the source framework on the inputs
        -> compared here, by the rule the artifact was verified by at compile time -> COMPLETED with a Comparison
A comparison that cannot be made still COMPLETES the job (the device's outputs stand) as NOT_COMPARED, saying why.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import sys
import tarfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np

from modelkiln.compiler.against_source import Agreement, Verified, against_source, verified_by
from modelkiln.devices.model import MATCHED, MISMATCHED, NOT_COMPARED, Comparison, DeviceJob
from modelkiln.devices.store import DeviceStore
from modelkiln.errors import KilnError
from modelkiln.executor import sandbox, scratch
from modelkiln.executor.runner import RESULT, TAIL_LINES, WorkerConfig, read_result, sha256_of
from modelkiln.executor.spec import ReferenceSpec
from modelkiln.jobs.errors import JobNotFound
from modelkiln.jobs.model import Job
from modelkiln.jobs.store import JobStore
from modelkiln.storage import download_file, open_store, parse_s3_uri

LEASE_S = 30.0
RENEW_EVERY_S = 5.0
POLL_S = 0.5
REFERENCE_S = 900  # the source model's run, conversion included, may take this long
MAX_REPORT_BYTES = 1 << 20
MAX_NPZ_BYTES = 512 << 20  # of arrays the supervisor loads from one .npz (the device's, or the child's): unpacked size


class NotCompared(Exception):
    """Why the comparison cannot be made; the message is the Comparison's detail."""


def run_comparison(device_job_id: int, config: WorkerConfig | None = None) -> str:
    """Compare device job `device_job_id` if it still waits for it; returns the Comparison's status (or why not)."""
    config = config or WorkerConfig.from_environ(os.environ)
    store = JobStore(config.store_url, migrate=False)
    devices = DeviceStore(store.engine)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        job = devices.claim_comparison(device_job_id, owner, LEASE_S)
        if job is None:
            return "not claimed: no longer waiting for a comparison"
        comparison = _Comparer(store, devices, config, job, owner).run()
        return comparison.status if devices.finish_comparison(device_job_id, owner, comparison) else "lease lost"
    finally:
        store.close()


class _Comparer:
    def __init__(self, store: JobStore, devices: DeviceStore, config: WorkerConfig, job: DeviceJob,
                 owner: str) -> None:
        assert job.id is not None
        self.store, self.devices, self.config, self.job, self.owner = store, devices, config, job, owner
        self.compile_name = str(job.request.get("CompilationJobName") or "")
        self.work = scratch.job_dir(f"compare-{job.id}", owner.rsplit(":", 1)[-1])
        self.jail = sandbox.Jail(self.work, sandbox.job_uid(job.id, sandbox.COMPARE_LANE), sandbox.child_env())
        self.limits = sandbox.Limits(config.job_memory_mb * 2**20, config.job_file_size_mb * 2**20, 4 * REFERENCE_S)
        self.next_renew = time.monotonic() + RENEW_EVERY_S

    def run(self) -> Comparison:
        scratch.sweep()
        with scratch.held(self.work):
            try:
                sandbox.prepare(self.work, self.jail.uid)
                return self._compare()
            except NotCompared as exc:
                return Comparison(NOT_COMPARED, self.compile_name, str(exc))

    def _compare(self) -> Comparison:
        try:
            compiled = self.store.get(self.job.account_id, self.compile_name)
        except JobNotFound:
            raise NotCompared(f"compilation job {self.compile_name}, which wrote the artifact, was deleted, so its "
                              "source model is unknown.") from None
        artifact = self._download(self.job.request["ModelS3Uri"], "ModelS3Uri", "artifact.tar.gz")
        if sha256_of(artifact) != compiled.artifact_digest:
            raise NotCompared(f"the object at ModelS3Uri is no longer the artifact compilation job {compiled.name} "
                              "wrote (its SHA-256 differs), so its source model is unknown. Run the inference job "
                              "on the compile's own artifact to have it compared.")
        verified = _verified(artifact)
        model = self._download(compiled.input_config["S3Uri"], "the compile's InputConfig.S3Uri", "model.tar.gz")
        inputs = self._download(self.job.request["InputS3Uri"], "InputS3Uri", "inputs.npz")
        device = _arrays(self._download(self.job.request["OutputS3Uri"], "OutputS3Uri", "outputs.npz"),
                         "the device's outputs (OutputS3Uri)")
        ran = self._reference(compiled, model, inputs)
        expected = _arrays(self.work / "reference.npz", "the source model's outputs")
        missing = [n for n in verified.outputs if n not in device or n not in expected]
        if missing:
            raise NotCompared(f"output {', '.join(missing)} is missing from the device's outputs (they have "
                              f"{', '.join(device) or 'none'}) or the source model's ({', '.join(expected)}).")
        where = (self.job.result or {}).get("Inference", {})
        ran_on = f"device {self.job.device_name}" + (" (emulated)" if where.get("Emulated") else "")
        agreement = against_source(verified, compiled.output_config.get("CompilerOptions"),
                                   [device[n] for n in verified.outputs], [expected[n] for n in verified.outputs],
                                   ran_on)
        return _comparison(agreement, compiled.name, f"{ran} on the Kiln server, from the compile's source model")

    def _download(self, uri: str, field: str, name: str) -> Path:
        local = self.work / name
        try:
            source = parse_s3_uri(uri)
            download_file(open_store(self.config.objects_url), self.job.account_id, source.bucket, source.key, local)
        except KilnError as exc:
            raise NotCompared(f"cannot read {field} {uri}: {exc}") from None
        self._renew()
        local.chmod(0o644)  # written as the worker, read as the comparison's uid
        return local

    def _reference(self, compiled: Job, model: Path, inputs: Path) -> str:
        """Run the source model in the sandbox; what ran (its framework and version)."""
        spec = ReferenceSpec(compiled.input_config["Framework"], str(self.jail.inside(model)),
                             str(self.jail.inside(inputs)), str(sandbox.JOB_ROOT / "reference.npz"),
                             str(sandbox.JOB_ROOT / RESULT), compiled.input_config.get("DataInputConfig"),
                             compiled.output_config.get("CompilerOptions"))
        spec.write(self.work / "spec.json")
        (self.work / "spec.json").chmod(0o644)
        child = sandbox.start([sys.executable, "-m", "modelkiln.executor.reference_main", "/job/spec.json"],
                              self.limits, self.jail)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        pump = threading.Thread(target=lambda: tail.extend(child.stdout or ()), daemon=True)
        pump.start()
        deadline = time.monotonic() + REFERENCE_S
        try:
            while child.poll() is None:
                time.sleep(POLL_S)
                self._renew()
                if time.monotonic() > deadline:
                    raise NotCompared(f"the source model did not finish within {REFERENCE_S} s on the server.")
        finally:
            if child.poll() is None:
                sandbox.kill(child, grace_s=0)
        pump.join(10)
        result = read_result(self.work / RESULT)
        if result is None:
            assert child.returncode is not None
            raise NotCompared("the source model could not run on the job's inputs: "
                              + sandbox.describe_exit(child.returncode, self.limits, child.peak_rss_bytes, tail))
        if not result.get("ok"):
            raise NotCompared(f"the source model could not run on the job's inputs: {str(result.get('reason'))[:2048]}")
        return str(result.get("ran") or compiled.input_config["Framework"])[:200]

    def _renew(self) -> None:
        if time.monotonic() >= self.next_renew:
            if not self.devices.renew_comparison(self.job.id or 0, self.owner, LEASE_S):
                raise NotCompared("this server worker lost the comparison's lease.")
            self.next_renew = time.monotonic() + RENEW_EVERY_S


def _verified(artifact: Path) -> Verified:
    """How the artifact was verified at compile time, from its own report.json."""
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            member = tar.getmember("report.json")
            data = tar.extractfile(member) if member.isfile() else None
            report = json.loads(data.read(MAX_REPORT_BYTES)) if data else None
        return verified_by(report if isinstance(report, dict) else {})
    except (KeyError, tarfile.TarError, OSError, ValueError) as exc:
        raise NotCompared(f"the artifact's report.json cannot be read ({exc}).") from None


def _arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    """An .npz's arrays (never pickles), read only when they unpack to at most MAX_NPZ_BYTES."""
    try:
        with zipfile.ZipFile(path) as packed:
            size = sum(info.file_size for info in packed.infolist())
        if size > MAX_NPZ_BYTES:
            raise ValueError(f"its arrays unpack to {size >> 20} MB; Kiln compares at most {MAX_NPZ_BYTES >> 20} MB")
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise NotCompared(f"{what} cannot be read as .npz ({exc}).") from None


def _comparison(agreement: Agreement, compile_name: str, reference: str) -> Comparison:
    return Comparison(MATCHED if agreement.matched else MISMATCHED, compile_name, agreement.detail, reference,
                      agreement.rule, agreement.max_abs_err, agreement.max_rel_err, agreement.cosine,
                      agreement.top1_agreement)

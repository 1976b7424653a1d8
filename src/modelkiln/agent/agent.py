"""`kiln agent`: register this device, then long-poll for its jobs and run each in a forked child."""
from __future__ import annotations

import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, TypeVar

from modelkiln.agent import tasks
from modelkiln.agent.child import ChildFailed, run_forked
from modelkiln.agent.client import CallError, Client
from modelkiln.agent.facts import device_facts

T = TypeVar("T")
RETRY_MAX_S = 30.0  # the longest pause between tries while the server cannot be reached


def register(client: Client, name: str, device_type: str) -> Dict[str, Any]:
    facts = device_facts()
    client.call("Kiln.RegisterDevice", {"DeviceName": name, "DeviceType": device_type, "Facts": facts})
    return facts


def serve(client: Client, name: str, device_type: str = "", wait_s: int = 20, jobs: int = 0,
          log: Callable[[str], None] = print) -> None:
    """Register, then run jobs as they come; with jobs > 0, return after that many. While the server cannot be
    reached (or answers 5xx) the agent waits and tries again, up to RETRY_MAX_S apart."""
    facts = _retrying(lambda: register(client, name, device_type), log)
    log(f"kiln agent: device {name} ({facts['Arch']}, {facts['Cpu']}, Python {facts['Python']}"
        f"{', emulated' if facts['Emulated'] else ''}) registered at {client.endpoint}; waiting for jobs")
    done = 0
    while not jobs or done < jobs:
        try:
            reply = _retrying(lambda: client.call("Kiln.PollDeviceWork", {"DeviceName": name, "WaitSeconds": wait_s},
                                                  timeout_s=wait_s + 30), log)
        except CallError as exc:
            if exc.code != "ResourceNotFound":
                raise
            _retrying(lambda: register(client, name, device_type), log)  # deregistered while this agent runs
            continue
        work = reply.get("Work")
        if work:
            log(f"kiln agent: {work['Kind'].lower()} job {work['JobName']}: running")
            log(f"kiln agent: {work['JobName']}: {run_job(client, name, work, bool(facts['Emulated']))}")
            done += 1


def _retrying(call: Callable[[], T], log: Callable[[str], None]) -> T:
    pause = 1.0
    while True:
        try:
            return call()
        except CallError as exc:
            if exc.code not in ("Unreachable", "InternalFailure", "ServiceUnavailable") and exc.status < 500:
                raise
            log(f"kiln agent: {exc}; trying again in {pause:.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_S)


def run_job(client: Client, device: str, work: Dict[str, Any], emulated: bool) -> str:
    """Run one claimed job and report how it ended (COMPLETED or FAILED with the cause); that status."""
    job = work["JobName"]

    def report(status: str, **extra: Any) -> None:
        client.call("Kiln.ReportDeviceWork", {"DeviceName": device, "JobName": job, "Status": status, **extra})

    def still_mine() -> bool:
        try:
            report("RUNNING")
        except CallError as exc:
            return exc.code != "ConflictException"  # an unreachable server may come back within the lease
        return True

    tick_s = max(1.0, work.get("LeaseSeconds", 30) / 3)
    try:
        with tempfile.TemporaryDirectory(prefix="kiln-agent-") as tmp:
            folder = Path(tmp)
            directory = extract(client.download(work["ModelS3Uri"], folder / "model.tar.gz"), folder / "model")
            if not still_mine():
                return "DROPPED"
            if work["Kind"] == "PROFILE":
                runs = int(work.get("Runs") or 100)
                result = {"Profile": run_forked(lambda: tasks.profile(directory, runs, emulated),
                                                folder / "result.json", still_mine, tick_s)}
            else:
                inputs = client.download(work["InputS3Uri"], folder / "inputs.npz")
                outputs = folder / "outputs.npz"
                inference = run_forked(lambda: tasks.infer(directory, inputs, outputs, emulated),
                                       folder / "result.json", still_mine, tick_s)
                client.upload(work["OutputS3Uri"], outputs)
                result = {"Inference": dict(inference, OutputS3Uri=work["OutputS3Uri"])}
        report("COMPLETED", **result)
        return "COMPLETED"
    except (ChildFailed, CallError, ArtifactProblem) as exc:
        return _failed(report, f"ClientError: on device {device}: {exc}")
    except BaseException:  # stopped (Ctrl-C, SIGTERM): say so rather than leave the job to its lease
        _failed(report, f"ServerError: the agent on device {device} was stopped while running the job. Start it "
                        "again and resubmit the job.")
        raise


def _failed(report: Callable[..., None], reason: str) -> str:
    """Report the job FAILED; if the server cannot be told (gone, or the job was taken back), its lease ends it."""
    try:
        report("FAILED", FailureReason=reason[:4096])
    except CallError as exc:
        return f"FAILED: {reason} (not reported: {exc})"
    return f"FAILED: {reason}"


class ArtifactProblem(Exception):
    """The downloaded model archive is not one the agent will unpack."""


def extract(archive: Path, dest: Path) -> Path:
    """Unpack model.tar.gz: plain files and folders inside dest only (it came from the network)."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
                    raise ArtifactProblem(f"the model archive holds {member.name!r}, which is not a plain file "
                                          "inside it; give a model.tar.gz written by a Kiln compilation job")
            if hasattr(tarfile, "data_filter"):  # 3.12+ and patched 3.8-3.11: the standard check too
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)  # every member was checked above
    except (tarfile.TarError, OSError) as exc:
        raise ArtifactProblem(f"cannot unpack the model archive: {exc}") from None
    return dest

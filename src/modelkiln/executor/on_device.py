"""The compile's verified candidates timed on one of the account's devices, the fastest shipped: the device
kiln-profile-on names, or, unasked, the account's ONLINE device of the job's TargetDevice type when that target
is of another architecture than the worker's (whose backend order would otherwise be extrapolated from this one).

The sandboxed compile packages every verified candidate (compiler CompileJob.candidates_dir); the supervisor
uploads each beside the job's output, queues a profile job per candidate for the device (the same jobs
`kiln profile` makes), waits for the device's agent to time them, and ships the one with the lowest median
latency, its report.json saying so. Candidates are the compile's output, so they are read as untrusted: plain
files only, streamed, never unpacked to disk.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelkiln.devices.model import COMPLETED, PROFILE, TERMINAL, DeviceJob
from modelkiln.devices.store import DeviceStore
from modelkiln.executor.spec import compiler_option
from modelkiln.jobs.model import Job
from modelkiln.storage import ObjectStore, parse_s3_uri, upload_file

RUNS = 100  # timed runs per candidate on the device
AUTO_WAIT_S = 600  # unasked, a device that has not timed every candidate by then is given up on
POLL_S = 1.0
MAX_REPORT_BYTES = 1 << 20


@dataclass(frozen=True)
class Timed:
    """One candidate's profile job on the device and how it ended."""

    key: str
    artifact: Path
    job_name: str
    p50_ms: float | None = None
    status: str = "PENDING"
    reason: str = ""


@dataclass(frozen=True)
class Timing:
    """Where a compile's candidates are timed: device None (on the worker, as the catalog orders), the device
    kiln-profile-on names, or (auto) one of the account's the supervisor chose, and why."""

    device: str | None
    auto: bool = False
    why: str = ""


def timing_device(devices: DeviceStore, job: Job, worker_arch: str) -> Timing:
    """The job's Timing. Unasked, a device is used only where it can tell what the worker cannot: the target's
    architecture differs from the worker's, more than one backend may ship (no kiln-backend), and the device
    is real (an emulated one's timings are the emulator's)."""
    options = job.output_config.get("CompilerOptions")
    named = compiler_option(options, "kiln-profile-on")
    if named:
        return Timing(named)
    target = job.output_config.get("TargetDevice")
    if not target or compiler_option(options, "kiln-backend"):
        return Timing(None)
    device = devices.online_of_type(job.account_id, target)
    arch = str(device.facts.get("Arch") or "") if device else ""
    if device is None or not arch or arch == worker_arch:
        return Timing(None)
    return Timing(device.name, True, f"chosen unasked: device {device.name} is your ONLINE {target} ({arch}); "
                                     "name another in kiln-profile-on, or pin kiln-backend to skip this")


def not_timed_note(report: dict, device: str, reason: str) -> dict:
    """report.json of an artifact the catalog's order chose because the device chosen unasked timed nothing."""
    report.setdefault("notes", []).append(f"device {device} was asked to time the candidates but did not ({reason}); "
                                          "the catalog's order chose")
    return report


class NotTimed(Exception):
    """The device timed no candidate; the message is the compile job's FailureReason."""


def candidates(folder: Path) -> list[tuple[str, Path]]:
    """(candidate key, its model.tar.gz) the compile left in folder; links are ignored (the child wrote them)."""
    found = []
    if folder.is_dir() and not folder.is_symlink():
        for sub in sorted(folder.iterdir()):
            artifact = sub / "model.tar.gz"
            if not sub.is_symlink() and not artifact.is_symlink() and artifact.is_file():
                found.append((sub.name, artifact))
    return found


def time_on_device(devices: DeviceStore, objects: ObjectStore, job: Job, device: str, found: list[tuple[str, Path]],
                   deadline: float, still_wanted: Callable[[], bool], log: Callable[[str], None]) -> list[Timed]:
    """Upload each candidate, queue its profile job on the device, and wait for all of them (or the deadline)."""
    out = job.output_config["S3OutputLocation"]
    timed = []
    for i, (key, artifact) in enumerate(found):
        uri = parse_s3_uri(out).join(f"kiln-candidates/{job.name}/{key}.tar.gz")
        upload_file(objects, job.account_id, artifact, uri.bucket, uri.key, content_type="application/gzip")
        name = f"{job.name[:36]}-{job.id}-{job.attempts}-{i}"
        now = time.time()
        devices.create_job(DeviceJob(job.account_id, name, job.region, PROFILE, "PENDING", device,
                                     {"ModelS3Uri": str(uri), "Runs": RUNS}, now, now, deadline))
        log(f"profile: {key} queued on device {device} as profile job {name} ({uri})")
        timed.append(Timed(key, artifact, name))
    while still_wanted():
        devices.expire()
        jobs = [devices.get_job(job.account_id, t.job_name) for t in timed]
        if all(j.status in TERMINAL for j in jobs):
            return [_outcome(t, j) for t, j in zip(timed, jobs)]
        if time.time() > deadline:
            raise NotTimed(f"ClientError: OutputConfig.CompilerOptions.kiln-profile-on: device {device} did not "
                           "time every candidate before MaxRuntimeInSeconds ran out. Check that its `kiln agent` "
                           "runs (`kiln devices`), or raise MaxRuntimeInSeconds.")
        time.sleep(POLL_S)
    return []


def _outcome(timed: Timed, job: DeviceJob) -> Timed:
    profile = (job.result or {}).get("Profile") or {}
    p50 = (profile.get("Latency") or {}).get("P50Ms")
    ok = job.status == COMPLETED and isinstance(p50, int | float) and not isinstance(p50, bool)
    return Timed(timed.key, timed.artifact, timed.job_name, float(p50) if ok else None, job.status, job.failure_reason)


def fastest(device: str, timed: list[Timed]) -> Timed:
    ran = [t for t in timed if t.p50_ms is not None]
    if not ran:
        reasons = "; ".join(f"{t.key}: {t.reason or t.status}" for t in timed)
        raise NotTimed(f"ClientError: OutputConfig.CompilerOptions.kiln-profile-on: no candidate ran on device "
                       f"{device}: {reasons}. Fix what the device reports (often a runtime it lacks: `kiln "
                       "devices` lists its runtimes), or drop kiln-profile-on.")
    return min(ran, key=lambda t: t.p50_ms or 0.0)


def selection(device: str, facts: dict[str, Any], winner: Timed, timed: list[Timed]) -> str:
    others = ", ".join(f"{t.key} {t.p50_ms:.3f} ms" if t.p50_ms is not None else f"{t.key} did not run"
                       for t in timed if t is not winner)
    where = f"{facts.get('Arch', '?')}{', emulated: qemu-user timings' if facts.get('Emulated') else ''}"
    return (f"fastest median latency on device {device} ({where}), {RUNS} runs each: {winner.key} "
            f"{winner.p50_ms:.3f} ms" + (f"; {others}" if others else ""))


def with_report(artifact: Path, out: Path, update: Callable[[dict], dict]) -> Path:
    """A copy of the artifact whose report.json is update(report.json); every other member streamed as is."""
    try:
        return _copy_with_report(artifact, out, update)
    except (tarfile.TarError, OSError, ValueError) as exc:  # the compile's own output, unreadable
        raise NotTimed(f"ServerError: the compile's candidate {artifact.parent.name} cannot be read ({exc}); the "
                       "job log has the compile's output.") from None


def _copy_with_report(artifact: Path, out: Path, update: Callable[[dict], dict]) -> Path:
    with tarfile.open(artifact, "r:gz") as source, tarfile.open(out, "w:gz") as dest:
        for member in source:
            if not member.isfile() or member.name.startswith("/") or ".." in member.name.split("/"):
                raise NotTimed(f"ServerError: the compile's candidate {artifact.parent.name} holds {member.name!r}, "
                               "not a plain file; the job log has the compile's output.")
            data = source.extractfile(member)
            if member.name == "report.json":
                raw = data.read(MAX_REPORT_BYTES + 1) if data else b"{}"
                text = json.dumps(update(json.loads(raw[:MAX_REPORT_BYTES] or b"{}")), indent=2).encode()
                member.size = len(text)
                dest.addfile(member, io.BytesIO(text))
            else:
                dest.addfile(member, data)
    return out


def device_report(report: dict, device: str, winner: Timed, timed: list[Timed], how: str) -> dict:
    """report.json after the device chose: the winner selected, every candidate's device timing recorded."""
    for cand in report.get("candidates") or []:
        if isinstance(cand, dict) and cand.get("status") == "selected":
            cand["status"] = "passed"
        if isinstance(cand, dict) and cand.get("name") == winner.key:
            cand["status"] = "selected"
    report["selected"], report["selection"] = winner.key, how
    report["device_profiles"] = [{"candidate": t.key, "device": device, "profile_job": t.job_name,
                                  "status": t.status, "p50_ms": t.p50_ms, "reason": t.reason} for t in timed]
    return report

"""The device store: devices and their jobs in the job store's database (SQLite or PostgreSQL).

Every method is one transaction. A claim moves the oldest PENDING job of one device to RUNNING with a lease
(PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so two agents of one device never take the same job); the
agent's reports renew it. `expire` fails jobs whose lease or pending deadline ran out; the API runs it before
every device operation, so whoever looks at a job never sees it stuck.
"""
from __future__ import annotations

import builtins
import dataclasses
import time
from typing import Any

import sqlalchemy as sa

from modelkiln.devices.errors import DeviceJobExists, DeviceJobNotFound, DeviceNotFound, NotYourWork
from modelkiln.devices.model import (
    COMPARING, COMPLETED, FAILED, INFERENCE, NOT_COMPARED, ONLINE_WITHIN_S, PENDING, RUNNING, Comparison, Device,
    DeviceJob,
)
from modelkiln.jobs import database, paging
from modelkiln.jobs.schema import device_jobs, devices

DEVICE_COLUMNS = tuple(f.name for f in dataclasses.fields(Device))
COMPARE_QUEUE_S = 3600.0  # an inference job's comparison not started by a server worker within this is given up
JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(DeviceJob))


class DeviceStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine  # the JobStore's: one database, one migration chain

    # ---- devices ---------------------------------------------------------------------------------------

    def register(self, account_id: str, region: str, name: str, device_type: str, facts: dict[str, Any],
                 now: float | None = None) -> Device:
        """Add the device, or update what its agent reports about it (the name is the account's key for it)."""
        now = time.time() if now is None else now
        with database.write(self.engine) as conn:
            found = _device_row(conn, account_id, name, lock=True)
            if found is None:
                device = Device(account_id, name, region, device_type, facts, now, now)
                values = {c: getattr(device, c) for c in DEVICE_COLUMNS if c != "id"}
                conn.execute(sa.insert(devices).values({**values, "name_key": name.lower()}))
                return device
            conn.execute(sa.update(devices).where(devices.c.id == found.id).values(
                device_type=device_type, facts=facts, last_seen_time=now))
            return dataclasses.replace(found, device_type=device_type, facts=facts, last_seen_time=now)

    def get_device(self, account_id: str, name: str) -> Device:
        with database.read(self.engine) as conn:
            return _need_device(_device_row(conn, account_id, name), account_id, name)

    def list_devices(self, account_id: str, max_results: int, token: str | None
                     ) -> tuple[builtins.list[Device], str | None]:
        query = sa.select(devices).where(devices.c.account_id == account_id)
        if token:
            key = paging.decode(token, "devices", str)
            query = query.where(paging.after((devices.c.name_key, devices.c.id), key, False))
        with database.read(self.engine) as conn:
            rows = conn.execute(query.order_by(devices.c.name_key, devices.c.id).limit(max_results + 1)).all()
        page = [_to_device(r) for r in rows[:max_results]]
        more = len(rows) > max_results
        return page, paging.encode("devices", rows[max_results - 1].name_key, rows[max_results - 1].id) if more else None

    def online_of_type(self, account_id: str, device_type: str, now: float | None = None) -> Device | None:
        """The account's device of that type seen most recently, if it is ONLINE and not emulated (its timings
        would be the emulator's): where a compile for that TargetDevice is timed unless it names one."""
        now = time.time() if now is None else now
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(devices).where(
                devices.c.account_id == account_id, devices.c.device_type == device_type,
                devices.c.last_seen_time >= now - ONLINE_WITHIN_S).order_by(devices.c.last_seen_time.desc())).all()
        return next((d for d in map(_to_device, rows) if not d.facts.get("Emulated")), None)

    def deregister(self, account_id: str, name: str, now: float | None = None) -> None:
        """Remove the device; its unfinished jobs fail, saying so."""
        now = time.time() if now is None else now
        with database.write(self.engine) as conn:
            device = _need_device(_device_row(conn, account_id, name, lock=True), account_id, name)
            conn.execute(sa.update(device_jobs).where(
                device_jobs.c.account_id == account_id, device_jobs.c.device_name == device.name,
                device_jobs.c.status.in_([PENDING, RUNNING])).values(
                status=FAILED, end_time=now, last_modified_time=now, lease_expires=None,
                failure_reason=f"ClientError: device {device.name} was deregistered before the job finished. "
                               "Register it again (start `kiln agent`) and resubmit the job."))
            conn.execute(sa.delete(devices).where(devices.c.id == device.id))

    # ---- jobs ------------------------------------------------------------------------------------------

    def create_job(self, job: DeviceJob) -> DeviceJob:
        """Queue a job for a registered device (the device's own spelling of its name is kept)."""
        try:
            with database.write(self.engine) as conn:
                device = _need_device(_device_row(conn, job.account_id, job.device_name), job.account_id,
                                      job.device_name)
                if _job_row(conn, job.account_id, job.name) is not None:
                    raise DeviceJobExists(job.account_id, job.name)
                job = dataclasses.replace(job, device_name=device.name)
                values = {c: getattr(job, c) for c in JOB_COLUMNS if c != "id"}
                key = conn.execute(sa.insert(device_jobs).values({**values, "name_key": job.name.lower()})).inserted_primary_key
        except sa.exc.IntegrityError as exc:  # PostgreSQL: a concurrent create won the unique index
            raise DeviceJobExists(job.account_id, job.name) from exc
        assert key is not None
        return dataclasses.replace(job, id=key[0])

    def get_job(self, account_id: str, name: str) -> DeviceJob:
        with database.read(self.engine) as conn:
            return _need_job(_job_row(conn, account_id, name), account_id, name)

    def list_jobs(self, account_id: str, device_name: str | None, max_results: int, token: str | None
                  ) -> tuple[builtins.list[DeviceJob], str | None]:
        """Newest first."""
        query = sa.select(device_jobs).where(device_jobs.c.account_id == account_id)
        if device_name:
            query = query.where(sa.func.lower(device_jobs.c.device_name) == device_name.lower())
        if token:
            key = paging.decode(token, "device-jobs", (int, float))
            query = query.where(paging.after((device_jobs.c.creation_time, device_jobs.c.id), key, True))
        order = (device_jobs.c.creation_time.desc(), device_jobs.c.id.desc())
        with database.read(self.engine) as conn:
            rows = conn.execute(query.order_by(*order).limit(max_results + 1)).all()
        page = [_to_job(r) for r in rows[:max_results]]
        last = rows[max_results - 1] if len(rows) > max_results else None
        return page, paging.encode("device-jobs", last.creation_time, last.id) if last is not None else None

    def seen(self, account_id: str, device_name: str, now: float | None = None) -> Device:
        """Mark the device as having asked for work now; DeviceNotFound if it is not registered."""
        now = time.time() if now is None else now
        with database.write(self.engine) as conn:
            device = _need_device(_device_row(conn, account_id, device_name, lock=True), account_id, device_name)
            conn.execute(sa.update(devices).where(devices.c.id == device.id).values(last_seen_time=now))
        return dataclasses.replace(device, last_seen_time=now)

    def claim(self, account_id: str, device_name: str, lease_s: float, now: float | None = None) -> DeviceJob | None:
        """The device's oldest PENDING job, now RUNNING with a lease; None if it has none."""
        now = time.time() if now is None else now
        pending = (device_jobs.c.account_id == account_id,
                   sa.func.lower(device_jobs.c.device_name) == device_name.lower(), device_jobs.c.status == PENDING)
        with database.read(self.engine) as conn:  # waiting agents look often: only a found job costs a write
            if conn.execute(sa.select(device_jobs.c.id).where(*pending).limit(1)).first() is None:
                return None
        with database.write(self.engine) as conn:
            row = conn.execute(sa.select(device_jobs).where(*pending)
                               .order_by(device_jobs.c.creation_time, device_jobs.c.id)
                               .limit(1).with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            job = dataclasses.replace(_to_job(row), status=RUNNING, start_time=now, last_modified_time=now,
                                      lease_expires=now + lease_s)
            conn.execute(sa.update(device_jobs).where(device_jobs.c.id == job.id).values(
                status=RUNNING, start_time=now, last_modified_time=now, lease_expires=now + lease_s))
            return job

    def report(self, account_id: str, device_name: str, job_name: str, status: str, lease_s: float, *,
               result: dict[str, Any] | None = None, failure_reason: str = "", now: float | None = None) -> DeviceJob:
        """An agent's report on the job it runs: RUNNING renews the lease, COMPLETED/FAILED end the job."""
        now = time.time() if now is None else now
        with database.write(self.engine) as conn:
            device = _need_device(_device_row(conn, account_id, device_name), account_id, device_name)
            conn.execute(sa.update(devices).where(devices.c.id == device.id).values(last_seen_time=now))
            job = _need_job(_job_row(conn, account_id, job_name, lock=True), account_id, job_name)
            if job.device_name != device.name:
                raise NotYourWork(job.name, device.name, f"it was queued for device {job.device_name}")
            if job.status != RUNNING:
                raise NotYourWork(job.name, device.name, f"it is {job.status}" + (
                    f" ({job.failure_reason})" if job.failure_reason else ""))
            changes: dict[str, Any] = {"last_modified_time": now}
            if status == RUNNING:
                changes["lease_expires"] = now + lease_s
            elif status == COMPLETED and job.kind == INFERENCE and job.request.get("CompilationJobName"):
                # outputs of a Kiln compile's artifact: the server runs the source model on the inputs next
                changes.update(status=COMPARING, result=result or {}, lease_expires=now + COMPARE_QUEUE_S,
                               lease_owner=None)
            else:
                changes.update(status=status, end_time=now, lease_expires=None)
                if status == COMPLETED:
                    changes["result"] = result or {}
                else:
                    changes["failure_reason"] = failure_reason or "ServerError: the device reported a failure without a reason."
            conn.execute(sa.update(device_jobs).where(device_jobs.c.id == job.id).values(changes))
            return dataclasses.replace(job, **changes)

    # ---- comparisons (the server's side of an inference job; modelkiln.executor.compare) --------------------

    def comparisons_waiting(self) -> builtins.list[int]:
        """The ids of COMPARING jobs no server worker has taken yet, oldest first: the executor's queue."""
        with database.read(self.engine) as conn:
            return list(conn.execute(sa.select(device_jobs.c.id).where(
                device_jobs.c.status == COMPARING, device_jobs.c.lease_owner.is_(None))
                .order_by(device_jobs.c.last_modified_time, device_jobs.c.id)).scalars())

    def claim_comparison(self, job_id: int, owner: str, lease_s: float, now: float | None = None) -> DeviceJob | None:
        """Job job_id's comparison, now owner's with a lease; None if it is not waiting (another worker has it)."""
        now = time.time() if now is None else now
        with database.write(self.engine) as conn:
            claimed = conn.execute(sa.update(device_jobs).where(
                device_jobs.c.id == job_id, device_jobs.c.status == COMPARING, device_jobs.c.lease_owner.is_(None))
                .values(lease_owner=owner, lease_expires=now + lease_s, last_modified_time=now)).rowcount
            row = conn.execute(sa.select(device_jobs).where(device_jobs.c.id == job_id)).first()
        return _to_job(row) if claimed and row is not None else None

    def renew_comparison(self, job_id: int, owner: str, lease_s: float, now: float | None = None) -> bool:
        """Extend owner's lease on the comparison; False if it is no longer owner's (it expired meanwhile)."""
        now = time.time() if now is None else now
        with database.write(self.engine) as conn:
            return bool(conn.execute(sa.update(device_jobs).where(
                device_jobs.c.id == job_id, device_jobs.c.status == COMPARING, device_jobs.c.lease_owner == owner)
                .values(lease_expires=now + lease_s)).rowcount)

    def finish_comparison(self, job_id: int, owner: str, comparison: Comparison, now: float | None = None) -> bool:
        """COMPLETED with the comparison beside the device's result; False if owner no longer held it."""
        now = time.time() if now is None else now
        with database.write(self.engine) as conn:
            row = conn.execute(sa.select(device_jobs).where(
                device_jobs.c.id == job_id, device_jobs.c.status == COMPARING, device_jobs.c.lease_owner == owner)
                .with_for_update()).first()
            if row is None:
                return False
            conn.execute(sa.update(device_jobs).where(device_jobs.c.id == job_id).values(
                **_compared(_to_job(row), comparison, now)))
            return True

    def expire(self, now: float | None = None) -> builtins.list[DeviceJob]:
        """FAIL RUNNING jobs whose lease ran out and PENDING jobs past their deadline; COMPLETE, uncompared, the
        COMPARING jobs whose comparison lapsed (its worker died, or none took it). The jobs changed."""
        now = time.time() if now is None else now
        changed = []
        with database.write(self.engine) as conn:
            rows = conn.execute(sa.select(device_jobs).where(sa.or_(
                sa.and_(device_jobs.c.status.in_([RUNNING, COMPARING]), device_jobs.c.lease_expires < now),
                sa.and_(device_jobs.c.status == PENDING, device_jobs.c.pending_deadline < now)))
                .with_for_update(skip_locked=True)).all()
            for row in rows:
                job = _to_job(row)
                if job.status == COMPARING:
                    changes = _compared(job, _comparison_lost(job, now), now)
                    conn.execute(sa.update(device_jobs).where(device_jobs.c.id == job.id).values(**changes))
                    changed.append(dataclasses.replace(job, **changes))
                    continue
                reason = _lost_reason(job, now) if job.status == RUNNING else _never_claimed_reason(conn, job)
                conn.execute(sa.update(device_jobs).where(device_jobs.c.id == job.id).values(
                    status=FAILED, failure_reason=reason, end_time=now, last_modified_time=now, lease_expires=None))
                changed.append(dataclasses.replace(job, status=FAILED, failure_reason=reason, end_time=now))
        return changed


def _compared(job: DeviceJob, comparison: Comparison, now: float) -> dict[str, Any]:
    return {"status": COMPLETED, "result": {**(job.result or {}), "Comparison": comparison.to_wire()},
            "end_time": now, "last_modified_time": now, "lease_expires": None, "lease_owner": None}


def _comparison_lost(job: DeviceJob, now: float) -> Comparison:
    where = (f"the server worker comparing it stopped renewing its lease ({job.lease_owner})" if job.lease_owner
             else f"no server worker took it within {COMPARE_QUEUE_S:.0f} s")
    return Comparison(NOT_COMPARED, job.request.get("CompilationJobName", ""),
                      f"The device's outputs are at OutputS3Uri, but {where}; detected at {_iso(now)}. Create the "
                      "inference job again to compare; if it recurs, ask the Kiln operator to check the workers.")


def _lost_reason(job: DeviceJob, now: float) -> str:
    return (f"ServerError: device {job.device_name} stopped reporting on this job: its lease ran out at "
            f"{_iso(job.lease_expires)} (last report {_iso(job.last_modified_time)}), detected at {_iso(now)}. "
            "Its agent was stopped, crashed or lost its connection; start `kiln agent` on it again and resubmit.")


def _never_claimed_reason(conn: sa.Connection, job: DeviceJob) -> str:
    device = _device_row(conn, job.account_id, job.device_name)
    seen = f"it was last seen at {_iso(device.last_seen_time)}" if device else "it is no longer registered"
    waited = job.pending_deadline - job.creation_time
    return (f"ClientError: device {job.device_name} did not ask for work within {waited:.0f} s ({seen}). "
            f"Start `kiln agent --device-name {job.device_name}` on it, then resubmit the job.")


def _iso(epoch: float | None) -> str:
    return "?" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _device_row(conn: sa.Connection, account_id: str, name: str, *, lock: bool = False) -> Device | None:
    query = sa.select(devices).where(devices.c.account_id == account_id, devices.c.name_key == name.lower())
    row = conn.execute(query.with_for_update() if lock else query).first()
    return None if row is None else _to_device(row)


def _job_row(conn: sa.Connection, account_id: str, name: str, *, lock: bool = False) -> DeviceJob | None:
    query = sa.select(device_jobs).where(device_jobs.c.account_id == account_id,
                                         device_jobs.c.name_key == name.lower())
    row = conn.execute(query.with_for_update() if lock else query).first()
    return None if row is None else _to_job(row)


def _to_device(row: sa.Row[Any]) -> Device:
    return Device(**{c: row._mapping[c] for c in DEVICE_COLUMNS})


def _to_job(row: sa.Row[Any]) -> DeviceJob:
    return DeviceJob(**{c: row._mapping[c] for c in JOB_COLUMNS})


def _need_device(device: Device | None, account_id: str, name: str) -> Device:
    if device is None:
        raise DeviceNotFound(account_id, name)
    return device


def _need_job(job: DeviceJob | None, account_id: str, name: str) -> DeviceJob:
    if job is None:
        raise DeviceJobNotFound(account_id, name)
    return job




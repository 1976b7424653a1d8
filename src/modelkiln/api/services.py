"""What the API works with: the account keys, the job store, the object store, and a nudge for the executor."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from modelkiln.auth import AccountStore
from modelkiln.devices.store import DeviceStore
from modelkiln.jobs.store import JobStore
from modelkiln.storage import ObjectStore


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Services:
    accounts: AccountStore
    jobs: JobStore
    objects: ObjectStore
    # Called after a job is created or stopped, so the executor looks at the store now rather than on its next
    # tick. The API never imports the executor: the job store is the queue between them.
    notify: Callable[[], None] = field(default=_nothing)
    max_active_jobs: int = 20  # unfinished jobs per account; more is ResourceLimitExceeded
    device_lease_s: float = 30.0  # a device job fails when its agent has not reported for this long
    max_json_body: int = 1024 * 1024  # largest awsJson request body accepted (a full CreateCompilationJob is <40 KB)

    @property
    def devices(self) -> DeviceStore:
        """Devices and their jobs, in the job store's database."""
        return DeviceStore(self.jobs.engine)

"""Device and device-job errors; each is a client error carrying its awsJson code (see modelkiln.jobs.errors)."""
from __future__ import annotations

from modelkiln.jobs.errors import JobError


class DeviceNotFound(JobError):
    code = "ResourceNotFound"

    def __init__(self, account_id: str, name: str) -> None:
        super().__init__(f"Could not find device {name} in account {account_id}.",
                         "Start `kiln agent --device-name NAME` on the device first; `kiln devices` lists yours.")


class DeviceJobNotFound(JobError):
    code = "ResourceNotFound"

    def __init__(self, account_id: str, name: str) -> None:
        super().__init__(f"Could not find device job {name} in account {account_id}.")


class DeviceJobExists(JobError):
    code = "ResourceInUse"

    def __init__(self, account_id: str, name: str) -> None:
        super().__init__(f"Device job {name} already exists in account {account_id}.", "Choose a different JobName.")


class NotYourWork(JobError):
    """An agent reported on a job that is not RUNNING on its device (it lost the lease, or never had it)."""

    code = "ConflictException"

    def __init__(self, name: str, device: str, why: str) -> None:
        super().__init__(f"Device job {name} is not running on device {device}: {why}.",
                         "The agent must drop this job and poll for new work.")

"""Job store and state-machine errors; each carries the SageMaker error code the API answers with.

Every one is a client error (HTTP 400): botocore retries 5xx, and none of these goes away on retry.
"""
from __future__ import annotations

from modelkiln.errors import KilnError


class JobError(KilnError):
    """A job operation the caller must change; `code` is the awsJson `__type` the API sends."""

    code = "ValidationException"
    http_status = 400
    stage = "jobs"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message + (f" {hint}" if hint else ""))
        self.message = message
        self.hint = hint


class JobExists(JobError):
    """CreateCompilationJob with a name the account already uses."""

    code = "ResourceInUse"

    def __init__(self, account_id: str, name: str) -> None:
        super().__init__(f"Compilation job {name} already exists in account {account_id}.",
                         "Choose a different CompilationJobName, or delete the old job first.")
        self.account_id, self.name = account_id, name


class TooManyActiveJobs(JobError):
    """CreateCompilationJob while the account already has as many unfinished jobs as the server allows."""

    code = "ResourceLimitExceeded"

    def __init__(self, account_id: str, limit: int) -> None:
        super().__init__(f"Account {account_id} already has {limit} compilation jobs that have not finished, "
                         "the most this Kiln server allows.",
                         "Wait for some to finish, or stop ones you no longer need, then create the job again.")
        self.account_id, self.limit = account_id, limit


class JobNotFound(JobError):
    """No job of that name (or ARN) in the caller's account."""

    code = "ResourceNotFound"

    def __init__(self, account_id: str, name: str) -> None:
        super().__init__(f"Could not find compilation job {name} in account {account_id}.")
        self.account_id, self.name = account_id, name


class IllegalTransition(JobError):
    """A status change the state machine forbids, e.g. anything out of a terminal state."""

    def __init__(self, name: str, current: str, new: str) -> None:
        super().__init__(f"Compilation job {name} cannot go from {current} to {new}.")
        self.name, self.current, self.new = name, current, new


class StatusConflict(JobError):
    """A compare-and-set status update found the job in a status it did not expect (someone got there first)."""

    def __init__(self, name: str, current: str, expected: frozenset[str] | set[str], new: str) -> None:
        wanted = "|".join(sorted(expected))
        super().__init__(f"Compilation job {name} is {current}, not {wanted}, so it cannot move to {new}.")
        self.name, self.current, self.expected, self.new = name, current, frozenset(expected), new


class JobNotTerminal(JobError):
    """DeleteCompilationJob on a job that is still STARTING, INPROGRESS or STOPPING."""

    def __init__(self, name: str, status: str) -> None:
        super().__init__(
            f"Compilation job {name} is {status}; only COMPLETED, FAILED or STOPPED jobs can be deleted.",
            "Stop it with StopCompilationJob, wait for STOPPED, then delete it.")
        self.name, self.status = name, status


class LeaseLost(JobError):
    """A worker renewed or finished a job whose lease it no longer holds (it lapsed and was recovered)."""

    def __init__(self, name: str, worker_id: str) -> None:
        super().__init__(f"Worker {worker_id} no longer holds the lease on compilation job {name}.")
        self.name, self.worker_id = name, worker_id


class TagLimitExceeded(JobError):
    """AddTags would leave more than 50 tags on the job (SageMaker's per-resource limit)."""

    def __init__(self, name: str, count: int, limit: int) -> None:
        super().__init__(f"Compilation job {name} would have {count} tags; the limit is {limit}.",
                         "Delete tags with DeleteTags before adding more.")
        self.name, self.count, self.limit = name, count, limit


class InvalidToken(JobError):
    """A NextToken this store did not issue, or issued for another sort order."""

    def __init__(self, why: str) -> None:
        super().__init__(f"NextToken is not valid: {why}.",
                         "Pass the NextToken from the previous response unchanged, with the same SortBy/SortOrder.")

"""The jobs list: ListCompilationJobs' own filters and paging, plus a target filter the API does not have.

Status and name filters and the NextToken go through jobs.validation exactly as a ListCompilationJobs call
would, so a bad value gets the API's message. The target is matched here, over as many store pages as it
takes to fill the console's page (at most SCAN_LIMIT jobs per request); the token handed on is the store's
own, so paging neither repeats nor skips a job.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from modelkiln.api.console.pages import JobRow, job_row, target_of
from modelkiln.api.services import Services
from modelkiln.errors import ValidationError
from modelkiln.jobs import validation
from modelkiln.jobs.errors import InvalidToken
from modelkiln.jobs.model import Job

PAGE_SIZE = 20
SCAN_LIMIT = 500  # jobs looked at per page when the target filter is rare; the page then ends early


@dataclass(frozen=True)
class Filters:
    """The jobs page's query: ?status=&name=&target=&page=TOKEN."""

    status: str = ""
    name: str = ""
    target: str = ""
    token: str = ""

    @classmethod
    def from_query(cls, query: Any) -> Filters:
        return cls(*(str(query.get(k, "")).strip()[:8192] for k in ("status", "name", "target", "page")))

    def query(self, token: str | None = None) -> str:
        """This filter's query string, on the page after `token` (or this page when None)."""
        pairs = {"status": self.status, "name": self.name, "target": self.target,
                 "page": self.token if token is None else token}
        return urlencode({k: v for k, v in pairs.items() if v})

    @property
    def any(self) -> bool:
        return bool(self.status or self.name or self.target)


@dataclass(frozen=True)
class Listing:
    rows: list[JobRow]
    next_token: str | None
    problem: str = ""  # a filter or token the API would refuse, with its message


def list_jobs(services: Services, account_id: str, filters: Filters, page_size: int = PAGE_SIZE) -> Listing:
    """One page of the account's jobs, newest first."""
    params: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Descending"}
    if filters.status:
        params["StatusEquals"] = filters.status
    if filters.name:
        params["NameContains"] = filters.name
    token, found, scanned = filters.token or None, [], 0
    try:
        while True:
            want = page_size - len(found)
            request = validation.validate_list_request({**params, "MaxResults": want, "NextToken": token})
            page, token = services.jobs.list(account_id, request)
            scanned += len(page)
            found.extend(job for job in page if _targets(job, filters.target))
            if token is None or len(found) >= page_size or scanned >= SCAN_LIMIT:
                break
    except (ValidationError, InvalidToken) as exc:
        return Listing([], None, str(exc))
    now = time.time()
    return Listing([job_row(job, now) for job in found], token)


def _targets(job: Job, wanted: str) -> bool:
    return not wanted or wanted.lower() in target_of(job).lower()

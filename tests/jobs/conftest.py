"""Job store fixtures: a fresh store per test on each backend (the PostgreSQL server is in tests/conftest.py)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelkiln.jobs.store import JobStore
from tests.conftest import new_postgres_database

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path) -> str:
    """The URL of a fresh, empty job store database: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'kiln.db'}"
    return new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store(store_url) -> Iterator[JobStore]:
    """A migrated job store on each backend."""
    with JobStore(store_url) as opened:
        yield opened

"""Job store fixtures: a throwaway PostgreSQL server for the session, and a fresh store per test on each backend."""
from __future__ import annotations

import glob
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelkiln.jobs.store import JobStore

BACKENDS = ["sqlite", "postgresql"]
_databases = itertools.count()


def _postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL's bin folder (/usr/lib/postgresql/<major>/bin), if installed."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)))  # type: ignore[union-attr]
    return Path(found[-1]).parent if found else None


def _run(args: list[str], log: Path | None = None) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode:
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir, listening on a unix socket only; yields a URL without a database."""
    bindir = _postgres_bindir()
    assert bindir is not None, "PostgreSQL is not installed (make system-deps installs Debian's postgresql)"
    # A short path: a unix socket's path must fit in 107 bytes. Owned by `postgres` when we are root,
    # because PostgreSQL refuses to run as root.
    root = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    as_owner: list[str] = []
    if os.geteuid() == 0:
        as_owner = ["runuser", "-u", "postgres", "--"]
        for path in (root, sockets):
            shutil.chown(path, "postgres", "postgres")
    _run([*as_owner, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
          "-E", "UTF8", "--locale=C"])
    # Durability off: this cluster lives for one test session. No TCP: nothing to collide with other runs.
    options = (f"-k {sockets} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=200")
    _run([*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
          "start"], log)
    try:
        yield f"postgresql+psycopg://postgres@/{{database}}?host={sockets}"
    finally:
        _run([*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], log)
        shutil.rmtree(root, ignore_errors=True)


def new_postgres_database(server_url: str) -> str:
    """A fresh empty database on the session's server; its URL."""
    name = f"kiln_{os.getpid()}_{next(_databases)}"
    engine = sa.create_engine(server_url.format(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE template0")
    engine.dispose()
    return server_url.format(database=name)


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

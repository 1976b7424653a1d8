"""Engines and transactions for the job store, SQLite and PostgreSQL alike, and running its migrations.

SQLite: WAL (readers never block the writer), a busy timeout, foreign keys on, and write transactions opened
with BEGIN IMMEDIATE, so two processes never both read-then-write and deadlock on the upgrade to a write lock.
PostgreSQL: READ COMMITTED; writers lock the rows they change (SELECT ... FOR UPDATE [SKIP LOCKED]).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

BUSY_TIMEOUT_MS = 30_000  # how long a SQLite writer waits for another process's write transaction
MIGRATIONS = "modelkiln.jobs:migrations"
VERSION_TABLE = "kiln_alembic_version"  # not alembic_version: a shared database may hold other apps' Alembic
_MIGRATE_LOCK = 0x4B494C4E  # "KILN": pg advisory lock id, so replicas starting together migrate one at a time
_WRITE = "kiln_write"


def default_url(data_dir: str | Path) -> str:
    """The embedded store: DATA_DIR/kiln.db."""
    return f"sqlite:///{Path(data_dir).resolve() / 'kiln.db'}"


def open_engine(url: str) -> sa.Engine:
    """An engine for a sqlite:/// or postgresql+psycopg:// URL, set up as the module docstring says."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True)
    path = parsed.database or ""
    memory = path in ("", ":memory:")
    if not memory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # In-memory: one connection for everyone, or each would see its own empty database.
    extra: dict[str, Any] = {"poolclass": StaticPool} if memory else {}
    engine = sa.create_engine(parsed, connect_args={"check_same_thread": False}, **extra)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself: pysqlite's implicit BEGIN is always DEFERRED.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", f"busy_timeout={BUSY_TIMEOUT_MS}", "foreign_keys=ON", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    immediate = connection.get_execution_options().get(_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextlib.contextmanager
def write(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that will write: committed on success, rolled back on any error."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


@contextlib.contextmanager
def read(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A read-only transaction (one consistent snapshot)."""
    with engine.connect() as conn, conn.begin():
        yield conn


def alembic_config(connection: sa.Connection | None = None) -> Any:
    """Alembic's Config built in code (no alembic.ini), pointing at the migrations shipped in the package."""
    from alembic.config import Config  # alembic is needed only when migrating

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (creating it in an empty database); a no-op when already there."""
    from alembic import command

    with write(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATE_LOCK})
        command.upgrade(alembic_config(conn), revision)


def current_revision(engine: sa.Engine) -> str | None:
    """The schema revision the database is at; None for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    with read(engine) as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def head_revision() -> str:
    """The newest schema revision this Kiln knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the job store has no migrations"
    return head

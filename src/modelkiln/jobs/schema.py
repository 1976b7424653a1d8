"""The job store's tables (SQLAlchemy Core). Change them only together with a new Alembic revision.

tests/jobs/test_store.py checks that the migrated database matches these definitions exactly.
"""
from __future__ import annotations

import sqlalchemy as sa

from modelkiln.jobs.model import STATUSES

# Explicit constraint names, so later migrations can drop or alter them on every backend.
NAMING = {
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=NAMING)


def name_type(length: int) -> sa.types.TypeEngine[str]:
    """Text compared and sorted byte-wise on PostgreSQL too (its default locale sorts case-insensitively)."""
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def time_type() -> sa.types.TypeEngine[float]:
    """Epoch seconds as a double: microsecond resolution for centuries."""
    return sa.Double()


STATUS_CHECK = "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")"

jobs = sa.Table(
    "compilation_jobs", metadata,
    # SQLite: INTEGER PRIMARY KEY AUTOINCREMENT, so ids of deleted jobs are never reused
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("name", name_type(63), nullable=False),
    sa.Column("name_key", name_type(63), nullable=False),  # name.lower(): ARNs, and so names, ignore case
    sa.Column("region", sa.String(32), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("failure_reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("creation_time", time_type(), nullable=False),
    sa.Column("last_modified_time", time_type(), nullable=False),
    sa.Column("start_time", time_type()),
    sa.Column("end_time", time_type()),
    sa.Column("pending_deadline", time_type()),
    sa.Column("role_arn", sa.String(2048), nullable=False),
    sa.Column("input_config", sa.JSON(), nullable=False),
    sa.Column("output_config", sa.JSON(), nullable=False),
    sa.Column("stopping_condition", sa.JSON(), nullable=False),
    sa.Column("vpc_config", sa.JSON(none_as_null=True)),
    sa.Column("model_package_version_arn", sa.String(2048)),
    sa.Column("artifact_uri", sa.Text()),
    sa.Column("artifact_digest", sa.String(128)),
    sa.Column("derived_data_input_config", sa.Text()),
    sa.Column("inference_image", sa.Text()),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(255)),
    sa.Column("lease_expires", time_type()),
    sa.Column("stop_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("log_uri", sa.Text()),
    sa.UniqueConstraint("account_id", "name_key"),
    sa.CheckConstraint(STATUS_CHECK, name="status"),
    sa.Index("ix_compilation_jobs_account_created", "account_id", "creation_time", "id"),  # list's default order
    sa.Index("ix_compilation_jobs_status_created", "status", "creation_time", "id"),  # claim_next: oldest first
    sa.Index("ix_compilation_jobs_status_lease", "status", "lease_expires"),  # recover_expired_leases
    sqlite_autoincrement=True,
)

tags = sa.Table(
    "compilation_job_tags", metadata,
    sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
              sa.ForeignKey(jobs.c.id, ondelete="CASCADE"), primary_key=True),
    sa.Column("key", name_type(128), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

# A job's log, line by line, written by whichever worker runs it: readable from any API replica.
logs = sa.Table(
    "compilation_job_logs", metadata,
    sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
              sa.ForeignKey(jobs.c.id, ondelete="CASCADE"), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("time", time_type(), nullable=False),
    sa.Column("line", sa.Text(), nullable=False),
)

# ---- devices and the jobs that run on them (modelkiln.devices) -------------------------------------------

# COMPARING: an inference job's outputs are in; the server runs the source model on its inputs to compare
DEVICE_JOB_STATUSES = ("PENDING", "RUNNING", "COMPARING", "COMPLETED", "FAILED")

# A device an account's agent registered: what it is, and when it last asked for work.
devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("name", name_type(63), nullable=False),
    sa.Column("name_key", name_type(63), nullable=False),
    sa.Column("region", sa.String(32), nullable=False),
    sa.Column("device_type", sa.String(64), nullable=False, server_default=""),
    sa.Column("facts", sa.JSON(), nullable=False),  # arch, CPU, memory, OS, Python, runtimes, emulated
    sa.Column("registered_time", time_type(), nullable=False),
    sa.Column("last_seen_time", time_type(), nullable=False),
    sa.UniqueConstraint("account_id", "name_key"),
    sqlite_autoincrement=True,
)

# Profile and inference jobs: queued for one device, claimed by its agent with a lease it renews.
device_jobs = sa.Table(
    "device_jobs", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("name", name_type(63), nullable=False),
    sa.Column("name_key", name_type(63), nullable=False),
    sa.Column("region", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("device_name", name_type(63), nullable=False),
    sa.Column("request", sa.JSON(), nullable=False),  # model, inputs, outputs, runs
    sa.Column("result", sa.JSON(none_as_null=True)),
    sa.Column("failure_reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("creation_time", time_type(), nullable=False),
    sa.Column("last_modified_time", time_type(), nullable=False),
    sa.Column("start_time", time_type()),
    sa.Column("end_time", time_type()),
    sa.Column("pending_deadline", time_type(), nullable=False),
    sa.Column("lease_expires", time_type()),
    sa.Column("lease_owner", sa.String(128)),  # COMPARING: the server worker running the comparison
    sa.UniqueConstraint("account_id", "name_key"),
    sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in DEVICE_JOB_STATUSES) + ")", name="status"),
    sa.Index("ix_device_jobs_account_created", "account_id", "creation_time", "id"),
    sa.Index("ix_device_jobs_device_status", "account_id", "device_name", "status"),  # an agent's poll
    sqlite_autoincrement=True,
)

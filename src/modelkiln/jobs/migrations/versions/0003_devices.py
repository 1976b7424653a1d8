"""Devices registered by `kiln agent`, and the profile and inference jobs that run on them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _name(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("name", _name(63), nullable=False),
        sa.Column("name_key", _name(63), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("device_type", sa.String(64), server_default="", nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("registered_time", sa.Double(), nullable=False),
        sa.Column("last_seen_time", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("account_id", "name_key", name="uq_devices_account_id_name_key"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "device_jobs",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("name", _name(63), nullable=False),
        sa.Column("name_key", _name(63), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("device_name", _name(63), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("failure_reason", sa.Text(), server_default="", nullable=False),
        sa.Column("creation_time", sa.Double(), nullable=False),
        sa.Column("last_modified_time", sa.Double(), nullable=False),
        sa.Column("start_time", sa.Double(), nullable=True),
        sa.Column("end_time", sa.Double(), nullable=True),
        sa.Column("pending_deadline", sa.Double(), nullable=False),
        sa.Column("lease_expires", sa.Double(), nullable=True),
        sa.CheckConstraint("status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED')", name="ck_device_jobs_status"),
        sa.PrimaryKeyConstraint("id", name="pk_device_jobs"),
        sa.UniqueConstraint("account_id", "name_key", name="uq_device_jobs_account_id_name_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_device_jobs_account_created", "device_jobs", ["account_id", "creation_time", "id"])
    op.create_index("ix_device_jobs_device_status", "device_jobs", ["account_id", "device_name", "status"])


def downgrade() -> None:
    op.drop_table("device_jobs")
    op.drop_table("devices")

"""Inference jobs compared with the source framework on the server: the COMPARING status, and who compares.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _statuses(*names: str) -> str:
    return "status IN (" + ", ".join(f"'{n}'" for n in names) + ")"


def _batch() -> Any:
    """SQLite rebuilds the table to change a constraint; it keeps AUTOINCREMENT (ids never reused)."""
    return op.batch_alter_table("device_jobs", table_kwargs={"sqlite_autoincrement": True})


def upgrade() -> None:
    with _batch() as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch.drop_constraint("ck_device_jobs_status", type_="check")
        batch.create_check_constraint(op.f("ck_device_jobs_status"),
                                      _statuses("PENDING", "RUNNING", "COMPARING", "COMPLETED", "FAILED"))


def downgrade() -> None:
    with _batch() as batch:
        batch.drop_constraint("ck_device_jobs_status", type_="check")
        batch.create_check_constraint(op.f("ck_device_jobs_status"), _statuses("PENDING", "RUNNING", "COMPLETED", "FAILED"))
        batch.drop_column("lease_owner")

"""Job logs: each job's lines, so `kiln logs` and GET /_kiln/jobs/NAME/logs work from any replica.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compilation_job_logs",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["compilation_jobs.id"], ondelete="CASCADE",
                                name="fk_compilation_job_logs_job_id_compilation_jobs"),
        sa.PrimaryKeyConstraint("job_id", "seq", name="pk_compilation_job_logs"),
    )


def downgrade() -> None:
    op.drop_table("compilation_job_logs")

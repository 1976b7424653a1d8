"""The first job store schema: compilation jobs and their tags.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Spelled out here, not imported from schema.py: a revision must keep creating what it created then.
STATUS_CHECK = "status IN ('STARTING', 'INPROGRESS', 'COMPLETED', 'FAILED', 'STOPPING', 'STOPPED')"


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _name(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "compilation_jobs",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("name", _name(63), nullable=False),
        sa.Column("name_key", _name(63), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("creation_time", sa.Double(), nullable=False),
        sa.Column("last_modified_time", sa.Double(), nullable=False),
        sa.Column("start_time", sa.Double()),
        sa.Column("end_time", sa.Double()),
        sa.Column("pending_deadline", sa.Double()),
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
        sa.Column("lease_expires", sa.Double()),
        sa.Column("stop_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("log_uri", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_compilation_jobs"),
        sa.UniqueConstraint("account_id", "name_key", name="uq_compilation_jobs_account_id_name_key"),
        sa.CheckConstraint(STATUS_CHECK, name="ck_compilation_jobs_status"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_compilation_jobs_account_created", "compilation_jobs", ["account_id", "creation_time", "id"])
    op.create_index("ix_compilation_jobs_status_created", "compilation_jobs", ["status", "creation_time", "id"])
    op.create_index("ix_compilation_jobs_status_lease", "compilation_jobs", ["status", "lease_expires"])
    op.create_table(
        "compilation_job_tags",
        sa.Column("job_id", _id(), nullable=False),
        sa.Column("key", _name(128), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "key", name="pk_compilation_job_tags"),
        sa.ForeignKeyConstraint(["job_id"], ["compilation_jobs.id"], ondelete="CASCADE",
                                name="fk_compilation_job_tags_job_id_compilation_jobs"),
    )


def downgrade() -> None:
    op.drop_table("compilation_job_tags")
    op.drop_index("ix_compilation_jobs_status_lease", "compilation_jobs")
    op.drop_index("ix_compilation_jobs_status_created", "compilation_jobs")
    op.drop_index("ix_compilation_jobs_account_created", "compilation_jobs")
    op.drop_table("compilation_jobs")

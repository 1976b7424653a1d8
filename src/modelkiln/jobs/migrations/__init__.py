"""Alembic migrations of the job store; JobStore.migrate() runs them (no alembic.ini needed)."""

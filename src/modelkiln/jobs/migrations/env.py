"""Alembic environment for the job store: JobStore.migrate() passes its connection in `config.attributes`.

Run by hand (e.g. `alembic -x url=sqlite:///kiln.db upgrade head` with script_location set to this folder),
it opens the database named by `-x url=` or the sqlalchemy.url option instead.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from modelkiln.jobs.database import VERSION_TABLE
from modelkiln.jobs.schema import metadata


def run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        run(conn)
    engine.dispose()

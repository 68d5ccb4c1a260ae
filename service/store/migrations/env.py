"""Alembic environment of the event store. Run only through service.store.migrate (which builds the
Config in code and passes an open connection), so no alembic.ini is needed at run time."""

from __future__ import annotations

from alembic import context

from service.store.db import VERSION_TABLE
from service.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the event store's migrations through service.store.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE on SQLite needs batch mode
)
with context.begin_transaction():
    context.run_migrations()

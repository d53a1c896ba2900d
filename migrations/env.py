"""Alembic environment: always handed a live connection by priv_network.db.

Migrations are run through ``priv-network db upgrade`` (or ``init``), which
opens the node's async engine and passes its connection here, so there is one
way to reach the database and no alembic.ini to keep in sync with config.toml.
"""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations through `priv-network db upgrade`, not the alembic CLI")

context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

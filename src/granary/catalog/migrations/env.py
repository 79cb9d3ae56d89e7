"""Alembic environment: runs on the connection handed over by granary.catalog.db.upgrade."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via the `alembic` command line
    raise RuntimeError("run migrations through granary.catalog.open_catalog(url)")
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""SQLAlchemy Core table of the gateway's endpoint registry (schema owned by migration serve_0001)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

endpoints = sa.Table(
    "serve_endpoints",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("job_id", sa.String(64), nullable=True),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("lease_s", sa.Float, nullable=False),
)

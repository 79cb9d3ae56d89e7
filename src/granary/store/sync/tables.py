"""SQLAlchemy Core table of the named remotes (schema owned by migration sync_0001)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

remotes = sa.Table(
    "sync_remotes",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)

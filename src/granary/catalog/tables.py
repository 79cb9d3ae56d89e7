"""SQLAlchemy Core table objects of the store's catalog tables (schema owned by store_0001)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("default_branch", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("manifest_key", sa.Text, nullable=False),
    sa.Column("parents", sa.Text, nullable=False),
    sa.Column("num_rows", sa.BigInteger, nullable=False),
    sa.Column("num_bytes", sa.BigInteger, nullable=False),
    sa.Column("num_shards", sa.Integer, nullable=False),
    sa.Column("num_tokens", sa.BigInteger, nullable=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("author", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
)

refs = sa.Table(
    "refs",
    metadata,
    sa.Column("dataset", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version_id", sa.String(64), nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

ref_log = sa.Table(
    "ref_log",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("old_version", sa.String(64), nullable=True),
    sa.Column("new_version", sa.String(64), nullable=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

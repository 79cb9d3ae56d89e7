"""SQLAlchemy Core tables of the model registry (schema owned by migration models_0001)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("store_version", sa.String(64), nullable=False),
    sa.Column("parent", sa.Integer, nullable=True),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("facts", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)

aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("moved_at", sa.Float, nullable=False),
)

events = sa.Table(
    "model_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

evals = sa.Table(
    "model_evals",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("data_version", sa.String(64), primary_key=True),
    sa.Column("num_shards", sa.Integer, primary_key=True),
    sa.Column("shard", sa.Integer, primary_key=True),
    sa.Column("seq_len", sa.Integer, nullable=False),
    sa.Column("sums", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

deployments = sa.Table(
    "model_deployments",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("served_as", sa.String(128), nullable=False),
    sa.Column("job_ids", sa.Text, nullable=False),
    sa.Column("replicas", sa.Integer, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

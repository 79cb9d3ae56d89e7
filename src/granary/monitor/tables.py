"""SQLAlchemy Core tables of the monitor (schema owned by migration monitor_0001; a change needs monitor_0002)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

series = sa.Table(
    "monitor_series",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("labels", sa.Text, nullable=False),  # canonical JSON (sorted keys), node included
    sa.UniqueConstraint("name", "labels", name="uq_monitor_series"),
)

samples = sa.Table(
    "monitor_samples",
    metadata,
    sa.Column("series_id", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("value", sa.Float, nullable=True),  # NULL: a NaN was reported
    sa.Index("ix_monitor_samples_series_ts", "series_id", "ts"),
)

events = sa.Table(
    "monitor_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("detector", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # firing | resolved
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),
    sa.Column("runbook", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("starts_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("ends_at", sa.Float, nullable=True),
    sa.Column("notified_at", sa.Float, nullable=True),
    sa.Index("ix_monitor_events_state", "state", "fingerprint"),
)

silences = sa.Table(
    "monitor_silences",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("matchers", sa.Text, nullable=False),  # JSON {label: value}
    sa.Column("starts_at", sa.Float, nullable=False),
    sa.Column("ends_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
)

job_energy = sa.Table(
    "monitor_job_energy",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("node", sa.String(128), nullable=False),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=False),
    sa.Column("energy_j", sa.Float, nullable=False),  # IT energy; PUE applied at report time
    sa.Column("source", sa.String(16), nullable=False),  # nvml | rapl | model
    sa.Column("tokens", sa.BigInteger, nullable=True),
)

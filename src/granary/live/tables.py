"""SQLAlchemy Core table of the stream ingesters' consumer offsets (schema owned by live_0001)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One row per (source, dataset, branch): the position of the last message whose rows are in the branch head.
# It is written in the same catalog transaction as the commit that holds those rows (exactly-once ingestion).
offsets = sa.Table(
    "live_offsets",
    metadata,
    sa.Column("source", sa.String(512), primary_key=True),  # e.g. redis://127.0.0.1:6379/0#events/granary
    sa.Column("dataset", sa.String(128), primary_key=True),
    sa.Column("branch", sa.String(128), primary_key=True),
    sa.Column("position", sa.Text, nullable=False),  # source-specific: a stream id, a sequence, an offset
    sa.Column("records", sa.BigInteger, nullable=False),  # records committed through this source, in all
    sa.Column("version_id", sa.String(64), nullable=True),  # the version that committed this position
    sa.Column("updated_at", sa.Float, nullable=False),
)

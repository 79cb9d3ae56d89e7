"""live: consumer offsets of stream ingesters, committed with the versions that hold their records."""

from __future__ import annotations

from alembic import op

from granary.live import tables

revision = "live_0001"
down_revision = None
branch_labels = ("live",)
depends_on = None

# The table objects in granary.live.tables are frozen at this revision; a schema change needs live_0002.


def upgrade() -> None:
    tables.offsets.create(op.get_bind())


def downgrade() -> None:
    op.drop_table("live_offsets")

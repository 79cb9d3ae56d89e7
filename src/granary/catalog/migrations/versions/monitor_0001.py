"""monitor: metric series and samples, detection events, silences, energy per job attempt."""

from __future__ import annotations

from alembic import op

from granary.monitor import tables

revision = "monitor_0001"
down_revision = None
branch_labels = ("monitor",)
depends_on = None

# The table objects in granary.monitor.tables are frozen at this revision; a schema change needs monitor_0002.


def upgrade() -> None:
    tables.metadata.create_all(op.get_bind())


def downgrade() -> None:
    for table in reversed(tables.metadata.sorted_tables):
        op.drop_table(table.name)

"""sync: named remotes that datasets are pushed to and pulled from."""

from __future__ import annotations

from alembic import op

from granary.store.sync import tables

revision = "sync_0001"
down_revision = None
branch_labels = ("sync",)
depends_on = None

# The table objects in granary.store.sync.tables are frozen at this revision; a schema change needs sync_0002.


def upgrade() -> None:
    tables.remotes.create(op.get_bind())


def downgrade() -> None:
    op.drop_table("sync_remotes")

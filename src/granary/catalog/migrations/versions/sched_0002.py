"""sched: restart and evacuation requests that the controller acts on (the watcher files them)."""

from __future__ import annotations

from alembic import op

from granary.sched import tables

revision = "sched_0002"
down_revision = "sched_0001"
branch_labels = None
depends_on = None

# granary.sched.tables.requests is frozen at this revision; a schema change needs sched_0003.


def upgrade() -> None:
    tables.requests.create(op.get_bind())


def downgrade() -> None:
    op.drop_table("sched_requests")

"""recurring: jobs the scheduler submits again every period (backups, restore drills, evaluations)."""

from __future__ import annotations

from alembic import op

from granary.sched import recurring

revision = "recurring_0001"
down_revision = None
branch_labels = ("recurring",)
depends_on = "sched_0001"

# The table object in granary.sched.recurring is frozen at this revision; a schema change needs recurring_0002.


def upgrade() -> None:
    recurring.recurring.create(op.get_bind())


def downgrade() -> None:
    op.drop_table("sched_recurring")

"""sched_lease: the controller lease (one scheduler controller per catalog at a time)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "schedlease_0001"
down_revision = None
branch_labels = ("sched_lease",)
depends_on = "sched_0001"


def upgrade() -> None:
    op.create_table(
        "sched_lease",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("renewed_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sched_lease")

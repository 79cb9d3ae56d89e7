"""serve: endpoints that serving jobs register for the gateway."""

from __future__ import annotations

from alembic import op

from granary.serve import tables

revision = "serve_0001"
down_revision = None
branch_labels = ("serve",)
depends_on = None

# The table objects in granary.serve.tables are frozen at this revision; a schema change needs serve_0002.


def upgrade() -> None:
    tables.endpoints.create(op.get_bind())
    op.create_index("ix_serve_endpoints_job", "serve_endpoints", ["job_id"])


def downgrade() -> None:
    op.drop_table("serve_endpoints")

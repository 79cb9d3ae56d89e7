"""models: registry versions, aliases, audited events, evaluation results, deployments."""

from __future__ import annotations

from alembic import op

from granary.models import tables

revision = "models_0001"
down_revision = None
branch_labels = ("models",)
depends_on = None

# The table objects in granary.models.tables are frozen at this revision; a schema change needs models_0002.


def upgrade() -> None:
    bind = op.get_bind()
    for table in (tables.versions, tables.aliases, tables.events, tables.evals, tables.deployments):
        table.create(bind)
    op.create_index("ix_model_events_name", "model_events", ["name", "at"])


def downgrade() -> None:
    for name in ("model_deployments", "model_evals", "model_events", "model_aliases", "model_versions"):
        op.drop_table(name)

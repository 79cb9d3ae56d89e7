"""api: indexes the HTTP API's keyset pagination needs (jobs by submit time, versions by creation time)."""

from __future__ import annotations

from alembic import op

revision = "api_0001"
down_revision = None
branch_labels = ("api",)
depends_on = ("store_0001", "sched_0001", "secure_0001")


def upgrade() -> None:
    op.create_index("ix_api_jobs_submit", "sched_jobs", ["submit_time", "id"])
    op.create_index("ix_api_jobs_tenant_submit", "sched_jobs", ["tenant", "submit_time", "id"])
    op.create_index("ix_api_versions_created", "versions", ["created_at", "id"])
    op.create_index("ix_api_audit_action", "secure_audit", ["action", "seq"])


def downgrade() -> None:
    op.drop_index("ix_api_audit_action", "secure_audit")
    op.drop_index("ix_api_versions_created", "versions")
    op.drop_index("ix_api_jobs_tenant_submit", "sched_jobs")
    op.drop_index("ix_api_jobs_submit", "sched_jobs")

"""store: datasets, versions, refs and the ref log."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "store_0001"
down_revision = None
branch_labels = ("store",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("default_branch", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("metadata", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("dataset", sa.String(128), sa.ForeignKey("datasets.name"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("manifest_key", sa.Text, nullable=False),
        sa.Column("parents", sa.Text, nullable=False),
        sa.Column("num_rows", sa.BigInteger, nullable=False),
        sa.Column("num_bytes", sa.BigInteger, nullable=False),
        sa.Column("num_shards", sa.Integer, nullable=False),
        sa.Column("num_tokens", sa.BigInteger, nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="live"),
    )
    op.create_index("ix_versions_dataset_created", "versions", ["dataset", "created_at"])
    op.create_table(
        "refs",
        sa.Column("dataset", sa.String(128), sa.ForeignKey("datasets.name"), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("versions.id"), nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "ref_log",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("old_version", sa.String(64), nullable=True),
        sa.Column("new_version", sa.String(64), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_ref_log_dataset", "ref_log", ["dataset", "seq"])


def downgrade() -> None:
    op.drop_table("ref_log")
    op.drop_table("refs")
    op.drop_index("ix_versions_dataset_created", "versions")
    op.drop_table("versions")
    op.drop_table("datasets")

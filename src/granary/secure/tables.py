"""SQLAlchemy Core tables of the security subsystem (schema owned by the ``secure`` migration branch)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

principals = sa.Table(
    "secure_principals",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("clearances", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
)

tokens = sa.Table(
    "secure_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

grants = sa.Table(
    "secure_grants",
    metadata,
    sa.Column("principal", sa.String(128), primary_key=True),
    sa.Column("scope_kind", sa.String(16), primary_key=True),
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("granted_at", sa.Float, nullable=False),
    sa.Column("granted_by", sa.String(128), nullable=False),
)

rules = sa.Table(
    "secure_rules",
    metadata,
    sa.Column("tag_pattern", sa.String(128), primary_key=True),
    sa.Column("clearance", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

policies = sa.Table(
    "secure_policies",
    metadata,
    sa.Column("dataset", sa.String(128), primary_key=True),
    sa.Column("policy", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

audit = sa.Table(
    "secure_audit",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("object", sa.Text, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("origin", sa.String(128), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

checkpoints = sa.Table(
    "secure_audit_checkpoints",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

data_keys = sa.Table(
    "secure_data_keys",
    metadata,
    sa.Column("key_ref", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("master_key_id", sa.String(128), nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("shredded_at", sa.Float, nullable=True),
)

expired = sa.Table(
    "secure_expired_versions",
    metadata,
    sa.Column("version_id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("by", sa.String(128), nullable=False),
)

dp_budgets = sa.Table(
    "secure_dp_budgets",
    metadata,
    sa.Column("dataset", sa.String(128), primary_key=True),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("delta", sa.Float, nullable=False),
)

dp_ledger = sa.Table(
    "secure_dp_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("query", sa.Text, nullable=False),
    sa.Column("mechanism", sa.String(16), nullable=False),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("delta", sa.Float, nullable=False),
)

forget_log = sa.Table(
    "secure_forget_log",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

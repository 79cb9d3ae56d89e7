"""secure: principals, tokens, grants, attribute rules, policies, audit chain, data keys, DP budgets."""

from __future__ import annotations

from alembic import op

from granary.secure import tables

revision = "secure_0001"
down_revision = None
branch_labels = ("secure",)
depends_on = None

# The table objects in granary.secure.tables are frozen at this revision; a schema change needs secure_0002.
_TABLES = [
    tables.principals, tables.tokens, tables.grants, tables.rules, tables.policies, tables.audit,
    tables.checkpoints, tables.data_keys, tables.expired, tables.dp_budgets, tables.dp_ledger,
    tables.forget_log,
]


def upgrade() -> None:
    bind = op.get_bind()
    for table in _TABLES:
        table.create(bind)
    op.create_index("ix_secure_audit_dataset", "secure_audit", ["dataset", "seq"])
    op.create_index("ix_secure_audit_principal", "secure_audit", ["principal", "seq"])
    op.create_index("ix_secure_data_keys_dataset", "secure_data_keys", ["dataset"])
    op.create_index("ix_secure_dp_ledger_dataset", "secure_dp_ledger", ["dataset"])


def downgrade() -> None:
    for index, table in [
        ("ix_secure_dp_ledger_dataset", "secure_dp_ledger"),
        ("ix_secure_data_keys_dataset", "secure_data_keys"),
        ("ix_secure_audit_principal", "secure_audit"),
        ("ix_secure_audit_dataset", "secure_audit"),
    ]:
        op.drop_index(index, table)
    bind = op.get_bind()
    for table in reversed(_TABLES):
        table.drop(bind)

"""money: user balances and the transfers ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from asyncblog.db.types import IdempotencyKeyType, Money, UsernameType, UTCDateTime, utcnow

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a column with its CHECK in place; no table copy needed.
        op.execute(
            "ALTER TABLE users ADD COLUMN balance INTEGER NOT NULL DEFAULT 0 "
            "CONSTRAINT ck_users_balance_not_negative CHECK (balance >= 0)"
        )
    else:
        op.add_column("users", sa.Column("balance", Money(), server_default="0", nullable=False))
        op.create_check_constraint(op.f("ck_users_balance_not_negative"), "users", "balance >= 0")
    op.create_table(
        "transfers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("from_user_id", sa.Integer(), nullable=True),
        sa.Column("to_user_id", sa.Integer(), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("idempotency_key", IdempotencyKeyType, nullable=True),
        sa.Column("request_fingerprint", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transfers_amount_positive")),
        sa.UniqueConstraint(
            "from_user_id",
            "idempotency_key",
            name=op.f("uq_transfers_from_user_id_idempotency_key"),
        ),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_index("ix_transfers_to_user_id_id", "transfers", ["to_user_id", "id"])
    op.create_index("ix_transfers_from_user_id_id", "transfers", ["from_user_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_transfers_from_user_id_id", table_name="transfers")
    op.drop_index("ix_transfers_to_user_id_id", table_name="transfers")
    op.drop_table("transfers")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a column that a CHECK uses: batch mode copies the table. Reflection
        # loses the username's NOCASE collation, so the column is given as it must be.
        with op.batch_alter_table(
            "users", reflect_args=(sa.Column("username", UsernameType, nullable=False),)
        ) as batch:
            batch.drop_constraint(op.f("ck_users_balance_not_negative"), type_="check")
            batch.drop_column("balance")
    else:
        op.drop_constraint(op.f("ck_users_balance_not_negative"), "users", type_="check")
        op.drop_column("users", "balance")

"""sessions: a token version on users, refresh tokens in families, ids never reused

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Existing users get token version 1, which access tokens issued before this revision do not
carry: they stop working, and their users log in again.

Ids never reused: SQLite gives a new row max(id)+1, so after the newest user is deleted the
next one would get its id, and with it the deleted user's ledger in GET /transfers and its
idempotency keys. AUTOINCREMENT (SQLite's sqlite_sequence) never goes back; it needs the tables
rebuilt, which batch mode does with their rows (foreign keys are off during migrations, see
env.py). PostgreSQL's sequences and InnoDB's persisted AUTO_INCREMENT never reuse ids already.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from asyncblog.db.types import UsernameType, UTCDateTime, utcnow

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("token_version", sa.Integer(), server_default="1", nullable=False)
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("token_version", sa.Integer(), nullable=False),
        sa.Column("spent", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_refresh_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("digest", name=op.f("uq_refresh_tokens_digest")),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"])
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family"])
    _rebuild_on_sqlite(autoincrement=True)


def downgrade() -> None:
    _rebuild_on_sqlite(autoincrement=False)
    op.drop_table("refresh_tokens")
    op.drop_column("users", "token_version")


def _rebuild_on_sqlite(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    options = {"sqlite_autoincrement": autoincrement}
    # Reflection loses the username's NOCASE collation: the column is given as it must be.
    username = (sa.Column("username", UsernameType, nullable=False),)
    with op.batch_alter_table(
        "users", recreate="always", table_kwargs=options, reflect_args=username
    ):
        pass
    with op.batch_alter_table("posts", recreate="always", table_kwargs=options):
        pass

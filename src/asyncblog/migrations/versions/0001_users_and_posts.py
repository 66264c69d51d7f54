"""users and posts

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from asyncblog.db.types import (
    PG_CASE_INSENSITIVE,
    ContentType,
    EmailType,
    UsernameType,
    UTCDateTime,
    utcnow,
)

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), server_default=utcnow(), nullable=False),
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE COLLATION IF NOT EXISTS {PG_CASE_INSENSITIVE} "
            "(provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
        )
    mysql_opts: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", UsernameType, nullable=False),
        sa.Column("email", EmailType, nullable=False),
        sa.Column("hashed_password", sa.String(255), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        **mysql_opts,
    )
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("content", ContentType, nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posts")),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_posts_author_id_users"), ondelete="CASCADE"
        ),
        **mysql_opts,
    )
    op.create_index(op.f("ix_posts_author_id"), "posts", ["author_id"])


def downgrade() -> None:
    op.drop_table("posts")  # its index goes with it
    op.drop_table("users")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP COLLATION IF EXISTS {PG_CASE_INSENSITIVE}")

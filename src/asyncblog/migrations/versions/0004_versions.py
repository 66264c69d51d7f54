"""versions: a row version on users and posts (optimistic concurrency, ETag / If-Match)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Rows that exist get version 1, as new rows do. Adding a NOT NULL column with a constant default
rewrites nothing on PostgreSQL 11+ and MariaDB 10.3+ (an instant column) nor on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("users", "posts")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("version", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    # SQLite (3.35+) drops a column no index or constraint uses in place.
    for table in TABLES:
        op.drop_column(table, "version")

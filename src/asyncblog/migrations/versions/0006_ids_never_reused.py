"""ids never reused: users and posts AUTOINCREMENT on SQLite

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

SQLite gives a new row max(id)+1: after the newest user is deleted, the next one would get its
id, and with it the deleted user's ledger in GET /transfers and its idempotency keys.
AUTOINCREMENT (SQLite's sqlite_sequence) never goes back; it needs the table rebuilt, which
batch mode does with the rows (foreign keys are off during migrations, see env.py). PostgreSQL
and MariaDB never reuse ids already: nothing to do there.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from asyncblog.db.types import UsernameType

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild(autoincrement: bool) -> None:
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


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)

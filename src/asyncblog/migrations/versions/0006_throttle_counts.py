"""throttle counts: the login and registration limits kept in the database

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

For several workers with no Redis (THROTTLE_STORE=database): the limits then hold across the
processes, as they do in one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "throttle_counts",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("throttle_counts")

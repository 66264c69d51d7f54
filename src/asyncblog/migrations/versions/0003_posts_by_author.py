"""posts by author in id order: one index on (author_id, id)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

GET /users/{id} embeds the author's first 100 posts by id and counts them, and GET /posts pages
through an author's posts by id: with an index on author_id alone, PostgreSQL walked the primary
key and filtered (5 ms for a user with 1,200 posts among 30,000). The new index serves the
foreign key too, so it is created before the old one goes (MariaDB needs one for the key).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_posts_author_id_id", "posts", ["author_id", "id"])
    op.drop_index("ix_posts_author_id", table_name="posts")


def downgrade() -> None:
    op.create_index("ix_posts_author_id", "posts", ["author_id"])
    op.drop_index("ix_posts_author_id_id", table_name="posts")

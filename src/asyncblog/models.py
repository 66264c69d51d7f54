"""ORM models: users, their posts, and the money ledger.

Relationships are `lazy="raise"`: code that needs related rows says so with an eager loader (a
post's author with `joinedload`, a user's posts with a joined `contains_eager`), and a forgotten
one fails loudly in tests instead of doing hidden I/O on the event loop.

Usernames compare case-insensitively on every backend through the column's collation: NOCASE on
SQLite, an ICU nondeterministic collation (`case_insensitive`, created by the first migration) on
PostgreSQL, utf8mb4_general_ci on MariaDB. So the unique constraint and a plain `=` lookup agree
everywhere. Emails are lower-cased before they are stored and compared byte for byte.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    MetaData,
    String,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from asyncblog.db.types import (
    MAX_ID,
    PG_CASE_INSENSITIVE,
    TITLE_MAX,
    ContentType,
    EmailType,
    IdempotencyKeyType,
    Money,
    UsernameType,
    UTCDateTime,
    utcnow,
)

__all__ = ["MAX_ID", "PG_CASE_INSENSITIVE", "Base", "Post", "RefreshToken", "Transfer", "User"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Ids are never given twice: a user registered after the newest one was deleted must not get
# its id (its ledger, its idempotency keys). PostgreSQL's sequences and InnoDB's persisted
# AUTO_INCREMENT never go back; SQLite reuses max(id)+1 unless the table is AUTOINCREMENT.
NEVER_REUSED = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime(), server_default=utcnow(), onupdate=utcnow()
    )


def version_column() -> Mapped[int]:
    """`version`: 1 for a new row, one more with every change of it (the ETag of its views).
    The ORM bumps it through the mapper's `version_id_col`; every Core UPDATE of the data path
    says `version = version + 1` itself."""
    return mapped_column(server_default="1")


class User(TimestampMixin, Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("username"),
        UniqueConstraint("email"),
        CheckConstraint("balance >= 0", name="balance_not_negative"),
        NEVER_REUSED,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(UsernameType)
    email: Mapped[str] = mapped_column(EmailType)
    hashed_password: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())
    is_admin: Mapped[bool] = mapped_column(default=False, server_default=false())
    balance: Mapped[Decimal] = mapped_column(Money(), default=Decimal("0.00"), server_default="0")
    version: Mapped[int] = version_column()
    # Carried in every access token and refresh-token family: moving it on a password change, a
    # deactivation or a logout of every login ends every token issued before.
    token_version: Mapped[int] = mapped_column(server_default="1")
    __mapper_args__ = {"eager_defaults": True, "version_id_col": version}

    posts: Mapped[list[Post]] = relationship(
        back_populates="author",
        order_by="Post.id",
        lazy="raise",
        passive_deletes=True,
    )

    def __repr__(self) -> str:  # never shows the hash
        return f"User(id={self.id!r}, username={self.username!r})"


class Post(TimestampMixin, Base):
    __tablename__ = "posts"
    # An author's posts in id order (the embedded first posts, pages by author); serves the FK.
    __table_args__ = (Index("ix_posts_author_id_id", "author_id", "id"), NEVER_REUSED)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    content: Mapped[str] = mapped_column(ContentType)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    version: Mapped[int] = version_column()
    __mapper_args__ = {"eager_defaults": True, "version_id_col": version}

    author: Mapped[User] = relationship(back_populates="posts", lazy="raise")

    def __repr__(self) -> str:
        return f"Post(id={self.id!r}, author_id={self.author_id!r})"


class Transfer(Base):
    """One row of the ledger: a deposit (`from_user_id` is NULL) or a transfer between users.

    User ids here are not foreign keys on purpose: the ledger outlives the users it names (a
    deleted user's transfers stay on record for the other side).
    """

    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        UniqueConstraint("from_user_id", "idempotency_key"),
        Index("ix_transfers_to_user_id_id", "to_user_id", "id"),
        Index("ix_transfers_from_user_id_id", "from_user_id", "id"),
    )
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    from_user_id: Mapped[int | None] = mapped_column()
    to_user_id: Mapped[int] = mapped_column()
    amount: Mapped[Decimal] = mapped_column(Money())
    idempotency_key: Mapped[str | None] = mapped_column(IdempotencyKeyType)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), server_default=utcnow())


class RefreshToken(Base):
    """One refresh token, stored as the SHA-256 of its text. A login is a `family` of them:
    each refresh spends one (`spent`) and adds the next. A family is valid while its
    `token_version` is the user's (a password change, a deactivation or a logout of every
    login moves the user's), and ends when a spent token of it is presented again."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        UniqueConstraint("digest"),
        Index("ix_refresh_tokens_user_id", "user_id"),
        Index("ix_refresh_tokens_family", "family"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64))
    token_version: Mapped[int] = mapped_column()
    spent: Mapped[bool] = mapped_column(default=False, server_default=false())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), server_default=utcnow())


class ThrottleCount(Base):
    """One counter of the login and registration limits, when they are kept in the database
    (THROTTLE_STORE=database: several workers with no Redis): `count` attempts until
    `expires_at` (seconds since the epoch)."""

    __tablename__ = "throttle_counts"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column()
    expires_at: Mapped[float] = mapped_column(Double())

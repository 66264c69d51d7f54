"""Read models: a user with its posts, rendered straight to the response's JSON bytes.

This is the hottest read (`GET /users/{id}`). On PostgreSQL the database renders the document in
ONE statement (`row_to_json` over the user's row with an aggregated array of its posts), sent
through asyncpg directly (`Database.driver_reader`): one round trip, no ORM objects, no second
serialization in Python. The SQL is generated from the pydantic
views themselves, so the document cannot drift from the response model: keys are the view's
fields, times are rendered in the same UTC format (`schemas.UTC_FORMAT`), money as its text.
Elsewhere (SQLite, MariaDB) the same document comes from the ORM (one joined query) and pydantic.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from functools import cache

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import contains_eager

from asyncblog.db import Database
from asyncblog.models import Post, User
from asyncblog.repositories.base import valid_id
from asyncblog.schemas import (
    PostView,
    UserPrivateWithPosts,
    UserPublicWithPosts,
)

PG_UTC_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'  # = schemas.UTC_FORMAT


def _pg_columns(view: type[BaseModel], alias: str, skip: frozenset[str] = frozenset()) -> str:
    """`alias.col AS field, ...` for a view's fields, each rendered as the view renders it."""
    columns = []
    for name, field in view.model_fields.items():
        if name in skip:
            continue
        column = f"{alias}.{name}"
        if field.annotation is dt.datetime:
            column = f"to_char({column} AT TIME ZONE 'UTC', '{PG_UTC_FORMAT}')"
        elif field.annotation is Decimal:
            column = f"{column}::text"
        columns.append(f"{column} AS {name}")
    return ", ".join(columns)


@cache
def _pg_user_with_posts(view: type[BaseModel]) -> str:
    posts = _pg_columns(PostView, "p")
    user = _pg_columns(view, "u", skip=frozenset({"posts"}))
    # Only identifiers of our own views go into this text; the id is a bound parameter.
    return (
        "SELECT row_to_json(d)::text FROM ("  # noqa: S608
        f"SELECT {user}, COALESCE(("
        "SELECT array_to_json(array_agg(p ORDER BY p.id)) FROM ("
        f"SELECT {posts} FROM posts p WHERE p.author_id = u.id) p"
        "), '[]'::json) AS posts "
        "FROM users u WHERE u.id = $1) d"
    )


@cache
def _adapter(view: type[BaseModel]) -> TypeAdapter[BaseModel]:
    return TypeAdapter(view)


class DocumentRepository:
    """Works on a connection of its own (`Database.driver_reader` on PostgreSQL, else
    `Database.connect`), not on a request's session: the hot read needs neither a session nor
    an ORM unit of work."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def user_with_posts(self, user_id: int, *, private: bool) -> bytes | None:
        """The public (or private) view of a user with all its posts, id ascending, as JSON."""
        if not valid_id(user_id):
            return None
        view = UserPrivateWithPosts if private else UserPublicWithPosts
        if self.db.dialect == "postgresql":
            async with self.db.driver_reader() as con:
                document: str | None = await con.fetchval(_pg_user_with_posts(view), user_id)
            return document.encode() if document is not None else None
        async with (
            self.db.connect() as conn,
            AsyncSession(bind=conn, expire_on_commit=False) as session,
        ):
            return await self._orm_document(session, view, user_id)

    @staticmethod
    async def _orm_document(
        session: AsyncSession, view: type[BaseModel], user_id: int
    ) -> bytes | None:
        stmt = (
            select(User)
            .outerjoin(User.posts)
            .options(contains_eager(User.posts))
            .where(User.id == user_id)
            .order_by(Post.id)
        )
        user = (await session.execute(stmt)).unique().scalar_one_or_none()
        if user is None:
            return None
        adapter = _adapter(view)
        return adapter.dump_json(adapter.validate_python(user, from_attributes=True))

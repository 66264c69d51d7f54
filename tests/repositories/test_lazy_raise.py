"""Relationships are `lazy="raise"`: ORM code that forgets an eager load fails at once instead
of doing hidden I/O. On SQLite, PostgreSQL and MariaDB (`state`: the test's rolled-back
connection)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import selectinload

from asyncblog.api.state import AppState
from asyncblog.models import Post, User


async def test_a_relationship_read_without_an_eager_load_raises(state: AppState) -> None:
    """A `User` and a `Post` loaded without a loader option (each in a session of its own, so
    the identity map cannot answer): reading `user.posts` or `post.author` raises, even inside
    `run_sync`, where a lazy load could do its I/O. With the loader option the same read
    works, so the rows are there and only the missing eager load made the difference."""
    async with state.db.write_session() as session:
        author = User(username="lazy_author", email="lazy@example.com", hashed_password="x")
        session.add(author)
        await session.flush()
        session.add(Post(author_id=author.id, title="t", content="c"))
        await session.commit()

    async with state.db.session() as session:
        user = await session.get(User, author.id)
        assert user is not None
        with pytest.raises(InvalidRequestError, match="lazy='raise'"):
            await session.run_sync(lambda _: user.posts)
    async with state.db.session() as session:
        post = (await session.scalars(select(Post).where(Post.author_id == author.id))).one()
        with pytest.raises(InvalidRequestError, match="lazy='raise'"):
            await session.run_sync(lambda _: post.author)

    async with state.db.session() as session:
        loaded = await session.get(User, author.id, options=[selectinload(User.posts)])
        assert loaded is not None and [p.title for p in loaded.posts] == ["t"]

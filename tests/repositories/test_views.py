"""The database renders the views' JSON byte for byte as pydantic renders the same rows.

A property test over generated rows (any text a client may store, times with any microsecond,
any balance): each read of the data path (`repositories.users` / `repositories.posts`) against
`dump(View, ORM rows)`, on every backend (on MariaDB both sides are pydantic's, from the data
path's rows and from the ORM's). Every example runs in a savepoint of the test's connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncblog.api.state import AppState
from asyncblog.models import Post, User
from asyncblog.repositories.posts import post_page, post_with_author
from asyncblog.repositories.users import user_document, user_page
from asyncblog.repositories.views import dump
from asyncblog.schemas import (
    PostView,
    PostWithAuthor,
    UserPrivate,
    UserPrivateWithPosts,
    UserPublic,
    UserPublicWithPosts,
)

MAX_EXAMPLES = 20

# Any text a client can store: no NUL (refused at the API), no lone surrogates (not UTF-8).
texts = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
)
names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
    min_size=3,
    max_size=20,
)
times = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)).map(
    lambda t: t.replace(tzinfo=dt.UTC)
)
balances = st.decimals(min_value=Decimal(0), max_value=Decimal("999999999.99"), places=2)
posts = st.lists(st.tuples(texts, texts, times, times), max_size=4)


@pytest.fixture
def examples_run() -> Iterator[list[int]]:
    runs: list[int] = []
    yield runs
    assert len(runs) >= MAX_EXAMPLES // 2, f"only {len(runs)} examples ran"


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=names,
    created=times,
    balance=balances,
    active=st.booleans(),
    written=posts,
)
async def test_the_database_renders_what_pydantic_renders(
    state: AppState,
    connection: AsyncConnection,
    examples_run: list[int],
    name: str,
    created: dt.datetime,
    balance: Decimal,
    active: bool,
    written: list[tuple[str, str, dt.datetime, dt.datetime]],
) -> None:
    examples_run.append(len(written))
    savepoint = await connection.begin_nested()
    try:
        async with state.db.write_session() as session:
            user = User(
                username=f"{name}{len(examples_run)}",
                email=f"v{len(examples_run)}@example.com",
                hashed_password="x",
                is_active=active,
                balance=balance,
                created_at=created,
                updated_at=created,
            )
            session.add(user)
            await session.flush()
            for title, content, made, changed in written:
                session.add(
                    Post(
                        author_id=user.id,
                        title=title,
                        content=content,
                        created_at=made,
                        updated_at=changed,
                    )
                )
            await session.commit()
        async with state.db.session() as session:
            stored = await session.get(User, user.id)
            rows = (
                await session.scalars(
                    select(Post).where(Post.author_id == user.id).order_by(Post.id)
                )
            ).all()
            first_user_id = await session.scalar(select(func.min(User.id)))
        assert stored is not None
        post_views = [PostView.model_validate(p) for p in rows]

        async with state.db.reader() as link:
            for private, view in ((False, UserPublicWithPosts), (True, UserPrivateWithPosts)):
                base = (UserPrivate if private else UserPublic).model_validate(stored)
                expected = dump(
                    view,
                    {**base.model_dump(), "posts": post_views, "posts_total": len(rows)},
                )
                assert await user_document(link, user.id, private=private) == expected
            for private, page_view in ((False, UserPublic), (True, UserPrivate)):
                page = await user_page(
                    link, skip=0, limit=100, after_id=user.id - 1, private=private
                )
                assert page == dump(page_view, [stored], many=True)
            if first_user_id is not None:
                assert await user_page(
                    link, skip=0, limit=1, after_id=first_user_id, private=False
                ) in (b"[]", dump(UserPublic, [stored], many=True))
            by_author = await post_page(link, author_id=user.id, skip=0, limit=100, after_id=None)
            assert by_author == dump(PostView, post_views, many=True)
            for post in rows:
                expected_post = dump(
                    PostWithAuthor,
                    {**PostView.model_validate(post).model_dump(), "author": stored},
                )
                assert await post_with_author(link, post.id) == expected_post
    finally:
        await savepoint.rollback()

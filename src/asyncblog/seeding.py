"""Fast demo data: set-based inserts in batches, one shared password hash."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, insert, select

from asyncblog.api.state import AppState
from asyncblog.config import Settings
from asyncblog.models import Post, User


async def seed_database(
    settings: Settings,
    *,
    users: int,
    posts_per_user: int,
    password: str,
    batch: int = 5000,
    on_users: Callable[[int], object] = lambda n: None,
    on_posts: Callable[[int], object] = lambda n: None,
) -> None:
    state = AppState.build(settings)
    try:
        hashed = await state.hasher.hash(password)
        async with state.db.write_session() as session:
            start = int(await session.scalar(select(func.coalesce(func.max(User.id), 0))) or 0)
            await session.commit()
        for first in range(0, users, batch):
            numbers = range(start + first + 1, start + min(first + batch, users) + 1)
            async with state.db.write_session() as session:
                ids = list(
                    await session.scalars(
                        insert(User).returning(User.id, sort_by_parameter_order=True),
                        [
                            {
                                "username": f"user{n}",
                                "email": f"user{n}@example.com",
                                "hashed_password": hashed,
                            }
                            for n in numbers
                        ],
                    )
                )
                posts = [
                    {
                        "author_id": user_id,
                        "title": f"Post {k + 1} by user{n}",
                        "content": f"Seeded post number {k + 1} of user{n}.",
                    }
                    for user_id, n in zip(ids, numbers, strict=True)
                    for k in range(posts_per_user)
                ]
                if posts:
                    await session.execute(insert(Post), posts)
                await session.commit()
            on_users(len(ids))
            on_posts(len(posts))
    finally:
        await state.db.dispose()

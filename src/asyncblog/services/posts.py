"""Writing, changing and deleting posts."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from asyncblog.db.database import Database
from asyncblog.errors import Forbidden, NotFound, Unauthorized
from asyncblog.models import Post, User
from asyncblog.repositories import PostRepository
from asyncblog.repositories.base import valid_id
from asyncblog.repositories.posts import create_post, post_page, post_with_author
from asyncblog.schemas import PostCreate, PostUpdate
from asyncblog.security import AccessClaims
from asyncblog.services.auth import INVALID_TOKEN

POST_NOT_FOUND = "Post not found"


class PostService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.posts = PostRepository(session)

    async def update(self, actor: User, post_id: int, data: PostUpdate) -> Post:
        post = await self.posts.get(post_id)
        if post is None:
            raise NotFound(POST_NOT_FOUND)
        if post.author_id != actor.id:
            raise Forbidden("Only the author may change a post")
        changes = data.model_dump(exclude_unset=True)
        if changes:
            await self.posts.update(post, **changes)
            await self.session.commit()
        return post

    async def delete(self, actor: User, post_id: int) -> None:
        post = await self.posts.get(post_id)
        if post is None:
            raise NotFound(POST_NOT_FOUND)
        if post.author_id != actor.id and not actor.is_admin:
            raise Forbidden("Only the author or an admin may delete a post")
        await self.posts.delete(post_id)
        await self.session.commit()


class PostViews:
    """Posts over the data path: each call one unit of work on one connection, answered as the
    view's JSON bytes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, claims: AccessClaims | None, data: PostCreate) -> bytes:
        """Write a post as the token's user: the caller's check and the INSERT are one
        statement, so a deactivated author or an ended token writes nothing (401)."""
        if claims is None or not valid_id(claims.user_id):
            raise Unauthorized(INVALID_TOKEN)
        async with self.db.link() as link:
            view = await create_post(
                link,
                author_id=claims.user_id,
                stamp=claims.password_stamp,
                title=data.title,
                content=data.content,
            )
        if view is None:
            raise Unauthorized(INVALID_TOKEN)
        return view

    async def get(self, post_id: int) -> bytes:
        async with self.db.link() as link:
            view = await post_with_author(link, post_id)
        if view is None:
            raise NotFound(POST_NOT_FOUND)
        return view

    async def page(
        self, *, author_id: int | None, skip: int, limit: int, after_id: int | None
    ) -> bytes:
        async with self.db.link() as link:
            return await post_page(
                link, author_id=author_id, skip=skip, limit=limit, after_id=after_id
            )

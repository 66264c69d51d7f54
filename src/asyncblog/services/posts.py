"""Writing, changing and deleting posts."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from asyncblog.errors import Forbidden, NotFound
from asyncblog.models import Post, User
from asyncblog.repositories import PostRepository
from asyncblog.schemas import PostCreate, PostUpdate

POST_NOT_FOUND = "Post not found"


class PostService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.posts = PostRepository(session)

    async def create(self, author: User, data: PostCreate) -> Post:
        post = await self.posts.create(author_id=author.id, title=data.title, content=data.content)
        await self.session.commit()
        return post

    async def get_with_author(self, post_id: int) -> Post:
        post = await self.posts.get_with_author(post_id)
        if post is None:
            raise NotFound(POST_NOT_FOUND)
        return post

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

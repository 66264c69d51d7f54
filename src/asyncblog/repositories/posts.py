"""Posts."""

from __future__ import annotations

from sqlalchemy.orm import joinedload

from asyncblog.models import Post
from asyncblog.repositories.base import Repository


class PostRepository(Repository[Post]):
    model = Post

    async def get_with_author(self, post_id: int) -> Post | None:
        return await self.get(post_id, options=[joinedload(Post.author, innerjoin=True)])

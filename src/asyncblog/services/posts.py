"""Writing, reading, changing and deleting posts, over the data path: each call one unit of
work on one connection, answered as the view's JSON bytes."""

from __future__ import annotations

from asyncblog.db.database import Database
from asyncblog.errors import Forbidden, NotFound, PreconditionFailed, Unauthorized
from asyncblog.repositories.base import valid_id
from asyncblog.repositories.posts import (
    author_of,
    create_post,
    delete_post,
    edit_post,
    post_page,
    post_view,
    post_with_author,
)
from asyncblog.schemas import PostCreate, PostUpdate, Versioned
from asyncblog.security import AccessClaims
from asyncblog.services.auth import INVALID_TOKEN, Caller

POST_NOT_FOUND = "Post not found"


class Posts:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, claims: AccessClaims | None, data: PostCreate) -> Versioned:
        """Write a post as the token's user: the caller's check and the INSERT are one
        statement, so a deactivated author or an ended token writes nothing (401)."""
        if claims is None or not valid_id(claims.user_id):
            raise Unauthorized(INVALID_TOKEN)
        async with self.db.writer() as link:
            view = await create_post(
                link,
                author_id=claims.user_id,
                token_version=claims.token_version,
                title=data.title,
                content=data.content,
            )
        if view is None:
            raise Unauthorized(INVALID_TOKEN)
        return view

    async def get(self, post_id: int) -> bytes:
        async with self.db.reader() as link:
            view = await post_with_author(link, post_id)
        if view is None:
            raise NotFound(POST_NOT_FOUND)
        return view

    async def page(
        self, *, author_id: int | None, skip: int, limit: int, after_id: int | None
    ) -> bytes:
        async with self.db.reader() as link:
            return await post_page(
                link, author_id=author_id, skip=skip, limit=limit, after_id=after_id
            )

    async def update(
        self, caller: Caller, post_id: int, data: PostUpdate, *, expected: int | None = None
    ) -> Versioned:
        """Only the author changes a post: the UPDATE names the author, so a post that changed
        hands meanwhile is not touched; with `expected` (If-Match) it also names the version,
        so of two edits sent with the same version exactly one is made. When nothing was
        changed, 404, 403 or 412 say why."""
        changes = data.model_dump(exclude_unset=True)
        async with self.db.writer() as link:
            if changes:
                view = await edit_post(
                    link,
                    post_id=post_id,
                    author_id=caller.id,
                    title=changes.get("title"),
                    content=changes.get("content"),
                    expected=expected,
                )
                if view is not None:
                    return view
            author = await author_of(link, post_id)
            if author is None:
                raise NotFound(POST_NOT_FOUND)
            if author != caller.id:
                raise Forbidden("Only the author may change a post")
            view = await post_view(link, post_id)  # nothing to change, or another version
        if view is None:  # deleted in between
            raise NotFound(POST_NOT_FOUND)
        if expected is not None and (changes or view.version != expected):
            raise PreconditionFailed()
        return view

    async def delete(self, caller: Caller, post_id: int) -> None:
        async with self.db.writer() as link:
            author = await author_of(link, post_id)
            if author is None:
                raise NotFound(POST_NOT_FOUND)
            if author != caller.id and not caller.is_admin:
                raise Forbidden("Only the author or an admin may delete a post")
            if not await delete_post(link, post_id):
                raise NotFound(POST_NOT_FOUND)

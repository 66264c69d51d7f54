from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from asyncblog.api.deps import CurrentUser, PageParams, Posts
from asyncblog.api.responses import COMMON_RESPONSES, errors
from asyncblog.models import MAX_ID, Post
from asyncblog.schemas import PostCreate, PostUpdate, PostView, PostWithAuthor

router = APIRouter(prefix="/posts", tags=["posts"], responses=COMMON_RESPONSES)

PostId = Annotated[int, Path(description="A post id")]
ERRORS = errors(401, 403, 404)
NOT_FOUND = errors(404)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PostView, responses=ERRORS)
async def create_post(data: PostCreate, posts: Posts, author: CurrentUser) -> Post:
    return await posts.create(author, data)


@router.get("", response_model=list[PostView])
async def list_posts(
    page: PageParams,
    posts: Posts,
    author_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> list[Post]:
    where = [Post.author_id == author_id] if author_id is not None else []
    return list(
        await posts.posts.list(
            skip=page.skip, limit=page.limit, after_id=page.after_id, where=where
        )
    )


@router.get("/{post_id}", response_model=PostWithAuthor, responses=NOT_FOUND)
async def get_post(post_id: PostId, posts: Posts) -> Post:
    return await posts.get_with_author(post_id)


@router.patch("/{post_id}", response_model=PostView, responses=ERRORS)
async def update_post(post_id: PostId, data: PostUpdate, posts: Posts, caller: CurrentUser) -> Post:
    return await posts.update(caller, post_id, data)


@router.delete("/{post_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_post(post_id: PostId, posts: Posts, caller: CurrentUser) -> Response:
    await posts.delete(caller, post_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from asyncblog.api.deps import Claims, CurrentUser, PageParams, PostReads, Posts
from asyncblog.api.responses import COMMON_RESPONSES, errors
from asyncblog.db.types import MAX_ID
from asyncblog.models import Post
from asyncblog.schemas import PostCreate, PostUpdate, PostView, PostWithAuthor

router = APIRouter(prefix="/posts", tags=["posts"], responses=COMMON_RESPONSES)

PostId = Annotated[int, Path(description="A post id")]
ERRORS = errors(401, 403, 404)
NOT_FOUND = errors(404)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PostView, responses=ERRORS)
async def create_post(data: PostCreate, posts: PostReads, claims: Claims) -> Response:
    return Response(await posts.create(claims, data), 201, media_type="application/json")


@router.get("", response_model=list[PostView])
async def list_posts(
    page: PageParams,
    posts: PostReads,
    author_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    body = await posts.page(
        author_id=author_id, skip=page.skip, limit=page.limit, after_id=page.after_id
    )
    return Response(body, media_type="application/json")


@router.get("/{post_id}", response_model=PostWithAuthor, responses=NOT_FOUND)
async def get_post(post_id: PostId, posts: PostReads) -> Response:
    return Response(await posts.get(post_id), media_type="application/json")


@router.patch("/{post_id}", response_model=PostView, responses=ERRORS)
async def update_post(post_id: PostId, data: PostUpdate, posts: Posts, caller: CurrentUser) -> Post:
    return await posts.update(caller, post_id, data)


@router.delete("/{post_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_post(post_id: PostId, posts: Posts, caller: CurrentUser) -> Response:
    await posts.delete(caller, post_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

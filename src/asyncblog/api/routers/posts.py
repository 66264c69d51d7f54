from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request, Response, status

from asyncblog.api.deps import (
    Claims,
    CurrentCaller,
    IfMatch,
    PageParams,
    expected_version,
    posts_of,
)
from asyncblog.api.responses import (
    ETAG_HEADER,
    PRECONDITION_FAILED,
    errors,
    versioned,
)
from asyncblog.api.routing import service_router
from asyncblog.db.types import MAX_ID
from asyncblog.schemas import PostCreate, PostUpdate, PostView, PostWithAuthor

router = service_router(prefix="/posts", tags=["posts"])

PostId = Annotated[int, Path(description="A post id")]
ERRORS = errors(401, 403, 404)
NOT_FOUND = errors(404)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PostView,
    responses={**ERRORS, 201: {"headers": ETAG_HEADER}},
)
async def create_post(data: PostCreate, request: Request, claims: Claims) -> Response:
    posts = posts_of(request)
    return versioned(await posts.create(claims, data), 201)


@router.get("", response_model=list[PostView])
async def list_posts(
    page: PageParams,
    request: Request,
    author_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    posts = posts_of(request)
    body = await posts.page(
        author_id=author_id, skip=page.skip, limit=page.limit, after_id=page.after_id
    )
    return Response(body, media_type="application/json")


@router.get("/{post_id}", response_model=PostWithAuthor, responses=NOT_FOUND)
async def get_post(post_id: PostId, request: Request) -> Response:
    posts = posts_of(request)
    return Response(await posts.get(post_id), media_type="application/json")


@router.patch(
    "/{post_id}",
    response_model=PostView,
    responses={**ERRORS, **PRECONDITION_FAILED, 200: {"headers": ETAG_HEADER}},
)
async def update_post(
    post_id: PostId,
    data: PostUpdate,
    caller: CurrentCaller,
    request: Request,
    if_match: IfMatch = None,
) -> Response:
    posts = posts_of(request)
    expected = expected_version(if_match)
    return versioned(await posts.update(caller, post_id, data, expected=expected))


@router.delete("/{post_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def delete_post(post_id: PostId, caller: CurrentCaller, request: Request) -> Response:
    posts = posts_of(request)
    await posts.delete(caller, post_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

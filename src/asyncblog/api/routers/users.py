from __future__ import annotations

from typing import Annotated

from fastapi import Path, Request, Response, status

from asyncblog.api.deps import (
    Bulk,
    Claims,
    CurrentAdmin,
    CurrentCaller,
    IfMatch,
    OptionalUser,
    PageParams,
    client_address,
    expected_version,
    users_of,
)
from asyncblog.api.responses import (
    ETAG_HEADER,
    PRECONDITION_FAILED,
    errors,
    json_bytes,
    versioned,
)
from asyncblog.api.routing import service_router
from asyncblog.schemas import (
    BulkConflict,
    BulkCreated,
    BulkDeleted,
    BulkUpdated,
    BulkUserCreate,
    BulkUserDelete,
    BulkUserUpdate,
    Count,
    Detail,
    UserCreate,
    UserPrivate,
    UserPrivateWithPosts,
    UserPublic,
    UserPublicWithPosts,
    UserUpdate,
)

router = service_router(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(description="A user id")]
ERRORS = errors(401, 403, 404)
NOT_FOUND = errors(404)
CONFLICT = errors(409)
UNAUTHORIZED = errors(401)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPrivate,
    responses={**CONFLICT, **errors(429), 201: {"headers": ETAG_HEADER}},
)
async def register(data: UserCreate, request: Request) -> Response:
    users = users_of(request)
    return versioned(await users.register(data, client=client_address(request)), 201, private=True)


@router.get(
    "",
    response_model=list[UserPublic] | list[UserPrivate],
    responses=UNAUTHORIZED,
    description="Public views; private views when the caller is an admin.",
)
async def list_users(page: PageParams, request: Request, caller: OptionalUser) -> Response:
    users = users_of(request)
    body = await users.page(skip=page.skip, limit=page.limit, after_id=page.after_id, caller=caller)
    return json_bytes(body, private=caller is not None)


@router.get("/count", response_model=Count)
async def count_users(request: Request) -> Count:
    users = users_of(request)
    return Count(count=await users.count())


@router.get("/me", response_model=UserPrivate, responses={**ERRORS, 200: {"headers": ETAG_HEADER}})
async def me(request: Request, claims: Claims) -> Response:
    users = users_of(request)
    return versioned(await users.me(claims), private=True)


@router.get(
    "/{user_id}",
    response_model=UserPublicWithPosts | UserPrivateWithPosts,
    responses={**NOT_FOUND, **UNAUTHORIZED},
    description="The private view when the caller is that user or an admin.",
)
async def get_user(user_id: UserId, request: Request, caller: OptionalUser) -> Response:
    users = users_of(request)
    return json_bytes(await users.document(user_id, caller), private=caller is not None)


@router.patch(
    "/{user_id}",
    response_model=UserPrivate,
    responses={**ERRORS, **CONFLICT, **PRECONDITION_FAILED, 200: {"headers": ETAG_HEADER}},
)
async def update_user(
    user_id: UserId,
    data: UserUpdate,
    caller: CurrentCaller,
    request: Request,
    if_match: IfMatch = None,
) -> Response:
    users = users_of(request)
    expected = expected_version(if_match)
    return versioned(await users.update(caller, user_id, data, expected=expected), private=True)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**ERRORS, 409: {"model": Detail, "description": "The balance is not 0.00"}},
)
async def delete_user(user_id: UserId, caller: CurrentCaller, request: Request) -> Response:
    users = users_of(request)
    await users.delete(caller, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------------- bulk (admin only)
bulk = service_router(prefix="/users/bulk", tags=["users: bulk"])


@bulk.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BulkCreated,
    responses={**ERRORS, 409: {"model": BulkConflict}},
)
async def bulk_create(data: BulkUserCreate, _admin: CurrentAdmin, users: Bulk) -> BulkCreated:
    outcome = await users.bulk_create(data)
    return BulkCreated(
        created=[UserPrivate.model_validate(u) for u in outcome.created], skipped=outcome.skipped
    )


@bulk.patch("", response_model=BulkUpdated, responses=ERRORS)
async def bulk_update(data: BulkUserUpdate, _admin: CurrentAdmin, users: Bulk) -> BulkUpdated:
    return BulkUpdated(updated=await users.bulk_set_active(data.ids, data.values.is_active))


@bulk.delete("", response_model=BulkDeleted, responses=ERRORS)
async def bulk_delete(data: BulkUserDelete, _admin: CurrentAdmin, users: Bulk) -> BulkDeleted:
    deleted, refused = await users.bulk_delete(data.ids)
    return BulkDeleted(deleted=deleted, refused=refused)

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Request, Response, status

from asyncblog.api.deps import Claims, CurrentAdmin, CurrentCaller, PageParams, transfers_of
from asyncblog.api.responses import errors
from asyncblog.api.routing import service_router
from asyncblog.schemas import Deposit, TransferCreate, TransferView

router = service_router(tags=["money"])

ERRORS = errors(401, 403, 404, 409, 503)
UNAUTHORIZED = errors(401)


@router.post(
    "/transfers",
    status_code=status.HTTP_201_CREATED,
    response_model=TransferView,
    responses=ERRORS,
    description="Send money from the caller's balance. The same Idempotency-Key with the same "
    "body replays the first answer; with a different body it is a 409.",
)
async def transfer(
    data: TransferCreate,
    request: Request,
    claims: Claims,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"),
    ] = None,
) -> Response:
    transfers = transfers_of(request)
    result = await transfers.transfer(claims, data, idempotency_key)
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return Response(result.view, 201, headers=headers, media_type="application/json")


@router.get("/transfers", response_model=list[TransferView], responses=UNAUTHORIZED)
async def my_transfers(page: PageParams, request: Request, caller: CurrentCaller) -> Response:
    transfers = transfers_of(request)
    body = await transfers.history(
        caller.id, skip=page.skip, limit=page.limit, after_id=page.after_id
    )
    return Response(body, media_type="application/json")


@router.post(
    "/admin/users/{user_id}/deposit",
    status_code=status.HTTP_201_CREATED,
    response_model=TransferView,
    responses=ERRORS,
    tags=["admin"],
)
async def deposit(
    user_id: Annotated[int, Path()], data: Deposit, _admin: CurrentAdmin, request: Request
) -> Response:
    view = await transfers_of(request).deposit(user_id, data.amount)
    return Response(view, 201, media_type="application/json")

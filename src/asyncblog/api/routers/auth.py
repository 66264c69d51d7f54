from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm

from asyncblog.api.deps import auth_of
from asyncblog.api.overrides import OVERRIDES
from asyncblog.api.responses import COMMON_RESPONSES, errors
from asyncblog.schemas import Token

router = APIRouter(
    prefix="/auth",
    tags=["auth"],
    responses=COMMON_RESPONSES,
    dependency_overrides_provider=OVERRIDES,
)


@router.post(
    "/token",
    response_model=Token,
    responses=errors(400, 401, 429),
)
async def login(form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request) -> Token:
    client = request.client.host if request.client else None
    token = await auth_of(request).login(form.username, form.password, client)
    return Token(access_token=token)

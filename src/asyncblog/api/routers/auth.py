from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm

from asyncblog.api.deps import Auth
from asyncblog.schemas import Detail, Token

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/token",
    response_model=Token,
    responses={401: {"model": Detail}, 400: {"model": Detail}},
)
async def login(form: Annotated[OAuth2PasswordRequestForm, Depends()], auth: Auth) -> Token:
    return Token(access_token=await auth.login(form.username, form.password))

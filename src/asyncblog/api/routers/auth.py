from __future__ import annotations

import inspect
from typing import Annotated, Any

from fastapi import Depends, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from asyncblog.api.deps import CurrentCaller, auth_of, client_address
from asyncblog.api.responses import NO_STORE, errors
from asyncblog.api.routing import service_router
from asyncblog.schemas import LogoutRequest, RefreshRequest, Token

router = service_router(prefix="/auth", tags=["auth"])


async def password_form(**fields: Any) -> OAuth2PasswordRequestForm:
    """FastAPI's OAuth2 password form (its fields and their OpenAPI schema), built by an `async
    def`: FastAPI builds a class dependency (`Depends()` of the class) in a worker thread."""
    return OAuth2PasswordRequestForm(**fields)


password_form.__signature__ = inspect.signature(OAuth2PasswordRequestForm)  # type: ignore[attr-defined]


@router.post("/token", response_model=Token, responses=errors(400, 401, 429))
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends(password_form)],
    request: Request,
    response: Response,
) -> Token:
    response.headers.update(NO_STORE)
    return await auth_of(request).login(form.username, form.password, client_address(request))


@router.post("/refresh", response_model=Token, responses=errors(401))
async def refresh(data: RefreshRequest, request: Request, response: Response) -> Token:
    """A new access token and the next refresh token; the one sent is spent."""
    response.headers.update(NO_STORE)
    return await auth_of(request).refresh(data.refresh_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=errors(401))
async def logout(data: LogoutRequest, caller: CurrentCaller, request: Request) -> Response:
    """End the login of `refresh_token`, or with `all: true` every login of the caller."""
    await auth_of(request).logout(caller, data.refresh_token, data.all)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

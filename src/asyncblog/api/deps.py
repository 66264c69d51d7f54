"""FastAPI dependencies: the request's session, the caller, and the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from asyncblog.api.state import AppState
from asyncblog.errors import Forbidden, Unauthorized
from asyncblog.models import User
from asyncblog.schemas import MAX_ID
from asyncblog.services.auth import INVALID_TOKEN, AuthService
from asyncblog.services.posts import PostService
from asyncblog.services.transfers import TransferService
from asyncblog.services.users import UserService

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

oauth2 = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.asyncblog
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_session(request: Request, state: State) -> AsyncIterator[AsyncSession]:
    """One session per request; rolled back if the request fails. Writing requests get a
    write session (on SQLite: BEGIN IMMEDIATE)."""
    db = state.db
    factory = db.session if request.method in READ_METHODS else db.write_session
    async with factory() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise


Session = Annotated[AsyncSession, Depends(get_session)]
Token = Annotated[str | None, Depends(oauth2)]


def auth_service(session: Session, state: State) -> AuthService:
    return AuthService(session, state.hasher, state.tokens)


Auth = Annotated[AuthService, Depends(auth_service)]


async def optional_user(token: Token, auth: Auth) -> User | None:
    """The caller when a token is sent (an invalid one is a 401), else None."""
    return await auth.caller(token) if token is not None else None


async def current_user(token: Token, auth: Auth) -> User:
    if token is None:
        raise Unauthorized(INVALID_TOKEN)
    return await auth.caller(token)


async def current_admin(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("Admin privileges required")
    return user


OptionalUser = Annotated[User | None, Depends(optional_user)]
CurrentUser = Annotated[User, Depends(current_user)]
CurrentAdmin = Annotated[User, Depends(current_admin)]


def user_service(session: Session, state: State) -> UserService:
    return UserService(session, state.hasher)


def post_service(session: Session) -> PostService:
    return PostService(session)


def transfer_service(session: Session) -> TransferService:
    return TransferService(session)


Users = Annotated[UserService, Depends(user_service)]
Posts = Annotated[PostService, Depends(post_service)]
Transfers = Annotated[TransferService, Depends(transfer_service)]


class Page:
    """`skip`, `limit` and `after_id` query parameters."""

    def __init__(
        self,
        skip: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=100)] = 100,
        after_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    ) -> None:
        self.skip = skip
        self.limit = limit
        self.after_id = after_id


PageParams = Annotated[Page, Depends()]

"""FastAPI dependencies: the request's session, the caller, and the services.

All of them are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a thread
hop per dependency per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from asyncblog.api.state import AppState
from asyncblog.errors import Forbidden, Unauthorized
from asyncblog.models import MAX_ID, User
from asyncblog.security import AccessClaims
from asyncblog.services.auth import INVALID_TOKEN, AuthService, Caller, caller_of
from asyncblog.services.posts import PostService, PostViews
from asyncblog.services.transfers import TransferService
from asyncblog.services.users import UserService, UserViews

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

TOKEN_URL = "/auth/token"
oauth2 = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def app_state(request: HTTPConnection) -> AppState:
    state: AppState = request.app.state.asyncblog
    return state


async def get_state(request: Request) -> AppState:
    return app_state(request)


State = Annotated[AppState, Depends(get_state)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, rolled back if the request fails. Writing requests get a write
    session (on SQLite: BEGIN IMMEDIATE). The request first waits, in arrival order, for one of
    the pool's connections (`Database.slot`)."""
    async with _session(request, write=request.method not in READ_METHODS) as session:
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A reading session whatever the method (logging in is a POST that only reads)."""
    async with _session(request, write=False) as session:
        yield session


@asynccontextmanager
async def _session(request: Request, *, write: bool) -> AsyncIterator[AsyncSession]:
    db = app_state(request).db
    async with db.slot(), (db.write_session if write else db.session)() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise


# scope="function": the session (its connection, its pool slot, on SQLite a write lock) is
# closed as soon as the endpoint has returned, not after the response has gone out to a
# possibly slow client.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
Token = Annotated[str | None, Depends(oauth2)]


async def auth_service(session: ReadSession, request: Request) -> AuthService:
    state = app_state(request)
    return AuthService(session, state.hasher, state.tokens, state.throttle)


Auth = Annotated[AuthService, Depends(auth_service)]


class OptionalCaller(OAuth2PasswordBearer):
    """The caller when a bearer token is sent (an invalid one is a 401), else None.

    One dependency that reads the token (declaring the same OAuth2 scheme in OpenAPI as `oauth2`)
    and looks the caller up: FastAPI resolves each level of a dependency tree on every request,
    and this one sits on the hottest read. Anonymous reads (the common case) cost no statement;
    with a token, one short one (`services.auth.caller_of`)."""

    async def __call__(self, request: HTTPConnection) -> Caller | None:  # type: ignore[override]
        token = await super().__call__(request)
        if token is None:
            return None
        state = app_state(request)
        return await caller_of(state.db, state.tokens.decode(token))


optional_user = OptionalCaller(
    tokenUrl=TOKEN_URL,
    scheme_name=oauth2.scheme_name,
    auto_error=False,
)


async def token_claims(token: Token, request: Request) -> AccessClaims | None:
    """The claims of the bearer token, checked by signature and expiry only (no statement):
    for routes whose statement checks the caller itself."""
    return app_state(request).tokens.decode(token) if token is not None else None


Claims = Annotated[AccessClaims | None, Depends(token_claims)]


async def current_user(token: Token, session: Session, request: Request) -> User:
    if token is None:
        raise Unauthorized(INVALID_TOKEN)
    state = app_state(request)
    return await AuthService(session, state.hasher, state.tokens).caller(token)


async def current_caller(claims: Claims, request: Request) -> Caller:
    """The active user of the bearer token (401 without one), as the data path needs it."""
    return await caller_of(app_state(request).db, claims)


async def current_admin(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    if not caller.is_admin:
        raise Forbidden("Admin privileges required")
    return caller


OptionalUser = Annotated[Caller | None, Depends(optional_user)]
CurrentUser = Annotated[User, Depends(current_user)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentAdmin = Annotated[Caller, Depends(current_admin)]


async def user_service(session: Session, request: Request) -> UserService:
    return UserService(session, app_state(request).hasher)


async def post_service(session: Session) -> PostService:
    return PostService(session)


async def transfer_service(request: Request) -> TransferService:
    return TransferService(app_state(request).db)


async def user_views(request: Request) -> UserViews:
    return UserViews(app_state(request).db)


async def post_views(request: Request) -> PostViews:
    return PostViews(app_state(request).db)


Users = Annotated[UserService, Depends(user_service)]
UserReads = Annotated[UserViews, Depends(user_views)]
PostReads = Annotated[PostViews, Depends(post_views)]
Posts = Annotated[PostService, Depends(post_service)]
Transfers = Annotated[TransferService, Depends(transfer_service)]


@dataclass(frozen=True, slots=True)
class Page:
    skip: int
    limit: int
    after_id: int | None


async def page_params(
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    after_id: Annotated[int | None, Query(ge=0)] = None,
) -> Page:
    """`skip`, `limit` and `after_id` query parameters. Ids are 32-bit, so an offset or cursor
    past 2**31 - 1 is past the end: it is clamped there (an empty page), never sent as is."""
    return Page(min(skip, MAX_ID), limit, min(after_id, MAX_ID) if after_id is not None else None)


PageParams = Annotated[Page, Depends(page_params)]

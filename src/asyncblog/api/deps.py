"""FastAPI dependencies (the caller, the page parameters, the bulk session) and the services of
a request.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in a worker thread, a
thread hop per dependency per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from asyncblog.api.state import AppState
from asyncblog.db import consistency
from asyncblog.db.types import MAX_ID
from asyncblog.errors import BadRequest, Forbidden
from asyncblog.security import AccessClaims
from asyncblog.services.auth import AuthService, Caller, caller_of
from asyncblog.services.posts import Posts
from asyncblog.services.transfers import TransferService
from asyncblog.services.users import BulkUsers, Users

TOKEN_URL = "/auth/token"
oauth2 = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def app_state(request: HTTPConnection) -> AppState:
    state: AppState = request.app.state.asyncblog
    return state


async def get_state(request: Request) -> AppState:
    return app_state(request)


State = Annotated[AppState, Depends(get_state)]
Token = Annotated[str | None, Depends(oauth2)]


# ---------------------------------------------------------------------------- the caller


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
        return await caller_of(state.db, decoded(state, token))


def decoded(state: AppState, token: str) -> AccessClaims | None:
    """The token's claims; with replicas, the request reads nothing older than the login that
    issued the token (a new client with a fresh token, on a lagging replica)."""
    claims = state.tokens.decode(token)
    if claims is not None and claims.position is not None and state.db.replicas:
        consistency.require(claims.position)
    return claims


optional_user = OptionalCaller(
    tokenUrl=TOKEN_URL,
    scheme_name=oauth2.scheme_name,
    auto_error=False,
)


async def token_claims(token: Token, request: Request) -> AccessClaims | None:
    """The claims of the bearer token, checked by signature and expiry only (no statement):
    for routes whose statement checks the caller itself."""
    return decoded(app_state(request), token) if token is not None else None


Claims = Annotated[AccessClaims | None, Depends(token_claims)]


async def current_caller(claims: Claims, request: Request) -> Caller:
    """The active user of the bearer token (401 without one), in one short statement."""
    return await caller_of(app_state(request).db, claims)


async def current_admin(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    if not caller.is_admin:
        raise Forbidden("Admin privileges required")
    return caller


OptionalUser = Annotated[Caller | None, Depends(optional_user)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentAdmin = Annotated[Caller, Depends(current_admin)]


# ---------------------------------------------------------------------------- services


# Services are built per request by plain functions, not resolved as FastAPI dependencies:
# measured, each dependency level costs about 20 us per request (a tenth of GET /posts/{id}),
# and a service is a few attributes. A test that needs another service passes another AppState
# (`create_app(state=...)`); the caller and the bulk session stay dependencies (overridable).


def client_address(request: HTTPConnection) -> str | None:
    """The client's address as uvicorn gives it (behind a proxy: the forwarded one it trusts)."""
    return request.client.host if request.client else None


def auth_of(request: HTTPConnection) -> AuthService:
    state = app_state(request)
    return AuthService(state.db, state.hasher, state.tokens, state.throttle)


def users_of(request: HTTPConnection) -> Users:
    state = app_state(request)
    return Users(state.db, state.hasher, state.throttle)


def posts_of(request: HTTPConnection) -> Posts:
    return Posts(app_state(request).db)


def transfers_of(request: HTTPConnection) -> TransferService:
    return TransferService(app_state(request).db)


async def bulk_service(request: Request) -> AsyncIterator[BulkUsers]:
    """The admin's bulk operations, on an ORM session (see `BulkUsers`): waits for a slot in
    arrival order like any unit of work, rolled back if the request fails, closed as soon as
    the endpoint returns."""
    state = app_state(request)
    await state.db.release_idle()  # the session's connection comes from SQLAlchemy's pool
    async with state.db.slot(write=True), state.db.write_session() as session:
        try:
            yield BulkUsers(session, state.hasher)
        except BaseException:
            await session.rollback()
            raise
    if state.db.replicas:  # the client's position after what the session committed
        async with state.db.writer():  # a unit that writes notes it (db.consistency)
            pass


Bulk = Annotated[BulkUsers, Depends(bulk_service, scope="function")]


# ---------------------------------------------------------------------------- paging


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


IfMatch = Annotated[
    str | None,
    Header(
        description='Change the row only while it has this version: `"<version>"` (the ETag '
        "of its last answer; the quotes may be left out), or `*` for any version.",
    ),
]
# Versions start at 1: an If-Match naming something that is not one of our versions (a weak tag,
# not a number) can match no row.
NO_VERSION = 0


def expected_version(if_match: str | None) -> int | None:
    """The version an If-Match header asks for; None when absent or `*` (any existing row)."""
    if if_match is None or if_match.strip() == "*":
        return None
    versions = {_version_of(tag.strip()) for tag in if_match.split(",") if tag.strip()}
    if len(versions) > 1:
        raise BadRequest("If-Match may name one version only")
    return versions.pop() if versions else NO_VERSION


def _version_of(tag: str) -> int:
    text = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        return NO_VERSION
    return int(text) if int(text) <= MAX_ID else NO_VERSION

"""Logging in and resolving the caller of a request."""

from __future__ import annotations

import re
from dataclasses import dataclass

from asyncblog.db import consistency
from asyncblog.db.database import Database
from asyncblog.errors import BadRequest, TooManyRequests, Unauthorized
from asyncblog.metrics import LOGINS
from asyncblog.repositories.base import valid_id
from asyncblog.repositories.sessions import end_every_login, end_login, renew, start_family
from asyncblog.repositories.users import CALLER, LOGIN, rehash
from asyncblog.schemas import USERNAME_PATTERN, Token
from asyncblog.security import (
    AccessClaims,
    PasswordHasher,
    TokenCodec,
    refresh_digest,
)
from asyncblog.throttle import Throttle, retry_after

WRONG_CREDENTIALS = "Incorrect username or password"
# MariaDB's PAD SPACE collations would match "alice " to "alice": only well-formed names are
# looked up at all.
USERNAME = re.compile(USERNAME_PATTERN)
INVALID_TOKEN = "Could not validate credentials"
INVALID_REFRESH = "Invalid or expired refresh token"


class AuthService:
    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        throttle: Throttle | None = None,
    ) -> None:
        self.db = db
        self.hasher = hasher
        self.tokens = tokens
        self.throttle = throttle

    async def login(self, username: str, password: str, client: str | None = None) -> Token:
        """An access token and the first refresh token of a new login, for these credentials.

        An unknown username costs the same Argon2 verification as a known one and gets the same
        answer, so neither the status nor the timing tells which usernames exist. The attempt
        takes its place under the throttle's limits before any password is checked (429 when
        full); a failure keeps it, anything else gives it back (`asyncblog.throttle`).
        """
        throttle = self.throttle
        limits = throttle.login_limits(username, client) if throttle is not None else []
        if throttle is not None:
            wait = await throttle.reserve(limits)
            if wait:
                LOGINS.labels(outcome="throttled").inc()
                raise TooManyRequests(
                    "Too many failed login attempts; try again later", headers=retry_after(wait)
                )
        try:
            token = await self._login(username, password)
        except Unauthorized:
            LOGINS.labels(outcome="failed").inc()
            raise  # a failed guess: it stays counted
        except BaseException:
            if throttle is not None:
                await throttle.release(limits)
            raise
        if throttle is not None:
            await throttle.succeeded(limits)
        LOGINS.labels(outcome="ok").inc()
        return token

    async def _login(self, username: str, password: str) -> Token:
        row = None
        if USERNAME.fullmatch(username):  # else no such user can exist; skip the query
            async with self.db.reader() as link:  # ended before the slow verification
                row = await link.row(LOGIN, username=username)
        hashed = row[1] if row is not None else None
        if not await self.hasher.verify(password, hashed) or row is None:
            raise Unauthorized(WRONG_CREDENTIALS)
        user_id, hashed_password, is_active, token_version = row
        if not is_active:
            raise BadRequest("Inactive user")
        rehashed = None
        if self.hasher.needs_rehash(hashed_password):  # the Argon2 parameters were raised
            rehashed = await self.hasher.hash(password)
        async with self.db.writer() as link:
            if rehashed is not None:
                await rehash(link, user_id=user_id, old=hashed_password, new=rehashed)
                hashed_password = rehashed
            refresh = await start_family(
                link,
                user_id=user_id,
                token_version=token_version,
                lifetime=self.tokens.refresh_lifetime,
            )
        return self._pair(user_id, hashed_password, token_version, refresh)

    def _pair(self, user_id: int, hashed_password: str, token_version: int, refresh: str) -> Token:
        return Token(
            access_token=self.tokens.issue(
                user_id, hashed_password, token_version, position=consistency.written.get()
            ),
            expires_in=int(self.tokens.lifetime.total_seconds()),
            refresh_token=refresh,
        )

    async def refresh(self, refresh_token: str) -> Token:
        """Spend a refresh token for a new access token and the next refresh token (401 for
        one that is unknown, expired, ended or spent; a spent one ends its login)."""
        async with self.db.writer() as link:
            renewed = await renew(
                link, digest=refresh_digest(refresh_token), lifetime=self.tokens.refresh_lifetime
            )
        if renewed is None:
            raise Unauthorized(INVALID_REFRESH)
        return self._pair(
            renewed.user_id, renewed.hashed_password, renewed.token_version, renewed.refresh_token
        )

    async def logout(self, caller: Caller, refresh_token: str | None, every_login: bool) -> None:
        """End one login (the family of `refresh_token`), or with `every_login` all of them and
        every access token issued before."""
        async with self.db.writer() as link:
            if every_login:
                await end_every_login(link, user_id=caller.id)
            elif refresh_token is not None:
                await end_login(link, user_id=caller.id, digest=refresh_digest(refresh_token))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request, as the data path's routes need it (no ORM object)."""

    id: int
    is_admin: bool


async def caller_of(db: Database, claims: AccessClaims | None) -> Caller:
    """The active user these token claims belong to (else 401), in one short statement."""
    if claims is None or not valid_id(claims.user_id):
        raise Unauthorized(INVALID_TOKEN)
    async with db.reader() as link:
        row = await link.row(CALLER, user_id=claims.user_id)
    if row is None:
        raise Unauthorized(INVALID_TOKEN)
    is_active, is_admin, token_version = row
    if not is_active or token_version != claims.token_version:
        raise Unauthorized(INVALID_TOKEN)
    return Caller(claims.user_id, bool(is_admin))

"""Logging in and resolving the caller of a request."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from asyncblog.db.database import Database
from asyncblog.errors import BadRequest, TooManyRequests, Unauthorized
from asyncblog.models import User
from asyncblog.repositories import UserRepository
from asyncblog.repositories.base import valid_id
from asyncblog.repositories.users import CALLER
from asyncblog.schemas import USERNAME_PATTERN
from asyncblog.security import AccessClaims, PasswordHasher, TokenCodec, password_stamp
from asyncblog.throttle import LoginThrottle

WRONG_CREDENTIALS = "Incorrect username or password"
# MariaDB's PAD SPACE collations would match "alice " to "alice": only well-formed names are
# looked up at all.
USERNAME = re.compile(USERNAME_PATTERN)
INVALID_TOKEN = "Could not validate credentials"


class AuthService:
    def __init__(
        self,
        session: AsyncSession,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.session = session
        self.users = UserRepository(session)
        self.hasher = hasher
        self.tokens = tokens
        self.throttle = throttle

    async def login(self, username: str, password: str, client: str | None = None) -> str:
        """An access token for these credentials.

        An unknown username costs the same Argon2 verification as a known one and gets the same
        answer, so neither the status nor the timing tells which usernames exist. Repeated
        failures for a username or a client address are refused for a while (429).
        """
        keys = LoginThrottle.keys(username, client)
        if self.throttle is not None:
            wait = await self.throttle.retry_after(keys)
            if wait:
                raise TooManyRequests(
                    "Too many failed login attempts; try again later",
                    headers={"Retry-After": str(math.ceil(wait))},
                )
        try:
            token = await self._login(username, password)
        except Unauthorized:
            if self.throttle is not None:
                await self.throttle.failed(keys)
            raise
        if self.throttle is not None:
            await self.throttle.succeeded(username)
        return token

    async def _login(self, username: str, password: str) -> str:
        user = None
        if USERNAME.fullmatch(username):  # else no such user can exist; skip the query
            user = await self.users.get_by_username(username)
        # Release the connection before the slow, CPU-bound verification.
        await self.session.commit()
        hashed = user.hashed_password if user is not None else None
        if not await self.hasher.verify(password, hashed) or user is None:
            raise Unauthorized(WRONG_CREDENTIALS)
        if not user.is_active:
            raise BadRequest("Inactive user")
        return self.tokens.issue(user.id, user.hashed_password)

    async def caller(self, token: str) -> User:
        """The active user a bearer token belongs to. Deactivation, deletion and a password
        change end every token issued before them."""
        claims = self.tokens.decode(token)
        user = await self.users.get(claims.user_id) if claims is not None else None
        if (
            user is None
            or claims is None
            or not user.is_active
            or password_stamp(user.hashed_password) != claims.password_stamp
        ):
            raise Unauthorized(INVALID_TOKEN)
        return user


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request, as the data path's routes need it (no ORM object)."""

    id: int
    is_admin: bool


async def caller_of(db: Database, claims: AccessClaims | None) -> Caller:
    """The active user these token claims belong to (else 401), in one short statement."""
    if claims is None or not valid_id(claims.user_id):
        raise Unauthorized(INVALID_TOKEN)
    async with db.link() as link:
        row = await link.row(CALLER, user_id=claims.user_id)
    if row is None:
        raise Unauthorized(INVALID_TOKEN)
    is_active, is_admin, hashed = row
    if not is_active or password_stamp(hashed) != claims.password_stamp:
        raise Unauthorized(INVALID_TOKEN)
    return Caller(claims.user_id, bool(is_admin))

"""Logging in and resolving the caller of a request."""

from __future__ import annotations

import re

from sqlalchemy.ext.asyncio import AsyncSession

from asyncblog.errors import BadRequest, Unauthorized
from asyncblog.models import User
from asyncblog.repositories import UserRepository
from asyncblog.schemas import USERNAME_PATTERN
from asyncblog.security import PasswordHasher, TokenCodec

WRONG_CREDENTIALS = "Incorrect username or password"
# MariaDB's PAD SPACE collations would match "alice " to "alice": only well-formed names are
# looked up at all.
USERNAME = re.compile(USERNAME_PATTERN)
INVALID_TOKEN = "Could not validate credentials"


class AuthService:
    def __init__(self, session: AsyncSession, hasher: PasswordHasher, tokens: TokenCodec) -> None:
        self.session = session
        self.users = UserRepository(session)
        self.hasher = hasher
        self.tokens = tokens

    async def login(self, username: str, password: str) -> str:
        """An access token for these credentials.

        An unknown username costs the same Argon2 verification as a known one and gets the same
        answer, so neither the status nor the timing tells which usernames exist.
        """
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
        return self.tokens.issue(user.id)

    async def caller(self, token: str) -> User:
        """The active user a bearer token belongs to."""
        user_id = self.tokens.user_id(token)
        user = await self.users.get(user_id) if user_id is not None else None
        if user is None or not user.is_active:
            raise Unauthorized(INVALID_TOKEN)
        return user

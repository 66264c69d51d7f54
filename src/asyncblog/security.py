"""Password hashing (Argon2id, off the event loop), JWT access tokens (HS256) and opaque refresh
tokens (random, stored only as their SHA-256)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import jwt
from anyio import to_thread
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from asyncblog.config import Settings
from asyncblog.db import consistency
from asyncblog.db.admission import slot_released
from asyncblog.errors import Unavailable

ALGORITHM = "HS256"
BUSY = "Too many password checks at once; retry shortly"
_T = TypeVar("_T")


class PasswordHasher:
    """Argon2id hashing in worker threads (argon2 releases the GIL), a bounded number at a time.

    Hashing is deliberately slow CPU work; on the event loop it would stall every other request.
    While it runs, the request gives its pool slot back (`db.slot_released`): tens of
    milliseconds per hash must not keep other requests from the database.
    """

    def __init__(self, settings: Settings) -> None:
        self._hash = PasswordHash(
            (
                Argon2Hasher(
                    time_cost=settings.argon2_time_cost,
                    memory_cost=settings.argon2_memory_cost_kib,
                    parallelism=settings.argon2_parallelism,
                ),
            )
        )
        self._limiter = anyio.CapacityLimiter(settings.password_hash_threads)
        # anyio's limiter queues without bound: a flood of registrations or logins would wait
        # minutes behind each other, every real login with them. Past this many waiting, 503.
        self._bound = settings.password_hash_threads + settings.password_hash_max_waiting
        self._in_flight = 0
        self._dummy: str | None = None

    async def _in_thread(self, work: Callable[..., _T], *args: Any) -> _T:
        """Run Argon2 in a worker thread, with the request's pool slot given back meanwhile;
        503 at once when the queue is full."""
        if self._in_flight >= self._bound:
            raise Unavailable(BUSY)
        self._in_flight += 1
        try:
            async with slot_released():
                return await to_thread.run_sync(work, *args, limiter=self._limiter)
        finally:
            self._in_flight -= 1

    async def hash(self, password: str) -> str:
        return await self._in_thread(self._hash.hash, password)

    async def hash_many(self, passwords: Sequence[str]) -> list[str]:
        """Hash a batch using at most half of the hashing threads, so that logins and
        registrations arriving meanwhile are not queued behind the whole batch."""
        share = asyncio.Semaphore(max(1, int(self._limiter.total_tokens) // 2))

        async def one(password: str) -> str:
            async with share:
                return await self.hash(password)

        return list(await asyncio.gather(*(one(p) for p in passwords)))

    async def verify(self, password: str, hashed: str | None) -> bool:
        """Check `password`; with no hash (unknown user) do the same work and return False."""
        if hashed is None:
            await self._verify(password, await self.dummy_hash())
            return False
        return await self._verify(password, hashed)

    def needs_rehash(self, hashed: str) -> bool:
        """Whether a stored hash was made with other Argon2 parameters than the current ones."""
        try:
            return bool(self._hash.current_hasher.check_needs_rehash(hashed))
        except Exception:  # not a hash of ours: nothing to upgrade
            return False

    async def dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self.hash("not a real password; used to equalise timing")
        return self._dummy

    async def _verify(self, password: str, hashed: str) -> bool:
        try:
            return await self._in_thread(self._hash.verify, password, hashed)
        except Unavailable:
            raise
        except Exception:  # a malformed stored hash is a failed login, not a 500
            return False


@dataclass(frozen=True, slots=True)
class TokenCodec:
    secret: str
    lifetime: dt.timedelta
    refresh_lifetime: dt.timedelta = dt.timedelta(days=14)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCodec:
        return cls(
            settings.resolved_secret_key(),
            dt.timedelta(minutes=settings.access_token_expire_minutes),
            dt.timedelta(days=settings.refresh_token_expire_days),
        )

    def issue(
        self,
        user_id: int,
        hashed_password: str,
        token_version: int,
        *,
        now: dt.datetime | None = None,
        position: int | None = None,
    ) -> str:
        """An access token: the user and its token version (the token stops working when the
        version moves), issued and expiry times. `pwd`, a stamp of the password hash, is not
        checked here; it is kept for the reference apps of ../shared/bench/compare.sh, which
        accept the project's tokens and check it. `lsn`: the primary's WAL position after the
        login was written, so that a client using the token reads no replica that has not
        replayed its own account yet (`db.consistency`)."""
        now = now or dt.datetime.now(dt.UTC)
        claims = {
            "sub": str(user_id),
            "pwd": password_stamp(hashed_password),
            "ver": token_version,
            "iat": now,
            "exp": now + self.lifetime,
            "typ": "access",
        }
        if position is not None:
            claims["lsn"] = consistency.render(position)
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def decode(self, token: str) -> AccessClaims | None:
        """The claims of a valid, unexpired access token; None for anything else (a bad
        signature, another algorithm, `alg: none`, a missing claim)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub", "ver"]},
            )
        except jwt.PyJWTError:
            return None
        sub, version = claims.get("sub"), claims.get("ver")
        if claims.get("typ") != "access" or not isinstance(sub, str) or not sub.isdigit():
            return None
        if type(version) is not int:
            return None
        lsn = claims.get("lsn")
        position = consistency.parse(lsn) if isinstance(lsn, str) else None
        return AccessClaims(int(sub), version, position)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    token_version: int
    position: int | None = None  # the WAL position the token was issued at (replicas)


def new_refresh_token() -> tuple[str, str]:
    """A refresh token (256 random bits, URL-safe text) and the digest that is stored."""
    token = secrets.token_urlsafe(32)
    return token, refresh_digest(token)


def refresh_digest(token: str) -> str:
    """What the database keeps of a refresh token: enough to find it, useless to a thief."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_family() -> str:
    return secrets.token_hex(16)


def password_stamp(hashed_password: str) -> str:
    """The first 16 hex digits of SHA-256 over the password hash (the `pwd` claim)."""
    return hashlib.sha256(hashed_password.encode()).hexdigest()[:16]

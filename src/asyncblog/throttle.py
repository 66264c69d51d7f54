"""Slowing down password guessing: failed logins counted per username and per client address.

After `LOGIN_MAX_FAILURES` failures for a key within `LOGIN_FAILURE_WINDOW_SECONDS`, attempts
for that key are refused with 429 until the window (which starts at the first failure) passes.
A successful login clears the username's count. Counts live in this process, or in Redis when
`REDIS_URL` is set so that every worker and replica shares them.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Protocol

from redis.exceptions import RedisError

from asyncblog.config import Settings
from asyncblog.schemas import USERNAME_PATTERN

logger = logging.getLogger("asyncblog.throttle")
USERNAME = re.compile(USERNAME_PATTERN)


class FailureCounter(Protocol):
    async def failures(self, key: str) -> tuple[int, float]:
        """(count, seconds until the count expires)."""

    async def add_failure(self, key: str) -> None: ...

    async def clear(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryCounter:
    def __init__(self, window: int) -> None:
        self.window = window
        self._counts: dict[str, tuple[int, float]] = {}

    def _live(self, key: str) -> tuple[int, float]:
        count, expires = self._counts.get(key, (0, 0.0))
        if expires <= time.monotonic():
            self._counts.pop(key, None)
            return 0, 0.0
        return count, expires

    async def failures(self, key: str) -> tuple[int, float]:
        count, expires = self._live(key)
        return count, max(expires - time.monotonic(), 0.0)

    async def add_failure(self, key: str) -> None:
        count, expires = self._live(key)
        if len(self._counts) > 100_000:  # bound memory under a flood of distinct keys
            now = time.monotonic()
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        self._counts[key] = (count + 1, expires or time.monotonic() + self.window)

    async def clear(self, key: str) -> None:
        self._counts.pop(key, None)

    async def close(self) -> None:
        self._counts.clear()


class RedisCounter:
    def __init__(self, url: str, window: int) -> None:
        from redis.asyncio import Redis

        self.window = window
        self.redis = Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)

    async def failures(self, key: str) -> tuple[int, float]:
        name = f"asyncblog:login:{key}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(name)
            pipe.pttl(name)
            count, ttl = await pipe.execute()
        return int(count or 0), max(int(ttl), 0) / 1000

    async def add_failure(self, key: str) -> None:
        name = f"asyncblog:login:{key}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, self.window, nx=True)
            await pipe.execute()

    async def clear(self, key: str) -> None:
        await self.redis.delete(f"asyncblog:login:{key}")

    async def close(self) -> None:
        await self.redis.aclose()


class LoginThrottle:
    def __init__(self, counter: FailureCounter, max_failures: int) -> None:
        self.counter = counter
        self.max_failures = max_failures

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginThrottle:
        window = settings.login_failure_window_seconds
        counter: FailureCounter = (
            RedisCounter(settings.redis_url, window)
            if settings.redis_url
            else MemoryCounter(window)
        )
        return cls(counter, settings.login_max_failures)

    @staticmethod
    def keys(username: str, client: str | None) -> list[str]:
        # A name no account can have shares one bucket: no unbounded keys from junk input.
        name = username.lower() if USERNAME.fullmatch(username) else "<malformed>"
        keys = [f"user:{name}"]
        if client:
            keys.append(f"addr:{client}")
        return keys

    async def retry_after(self, keys: list[str]) -> float:
        """0 if an attempt may go ahead, else the seconds to wait. If the counter store (Redis)
        is unreachable, logins go ahead unthrottled and a warning is logged: an outage of the
        throttle must not become an outage of logging in."""
        wait = 0.0
        for key in keys:
            try:
                count, ttl = await self.counter.failures(key)
            except RedisError as exc:
                logger.warning("login throttle unavailable: %s", exc)
                return 0.0
            if count >= self.max_failures:
                wait = max(wait, ttl, 1.0)
        return wait

    async def failed(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await self.counter.add_failure(key)
            except RedisError as exc:
                logger.warning("login throttle unavailable: %s", exc)
                return

    async def succeeded(self, username: str) -> None:
        try:
            await self.counter.clear(self.keys(username, None)[0])
        except RedisError as exc:
            logger.warning("login throttle unavailable: %s", exc)

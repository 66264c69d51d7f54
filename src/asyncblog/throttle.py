"""Slowing down password guessing and mass registration, fairly and under concurrency.

Every login attempt first **reserves** a place under three limits, atomically, before any
password is checked: the (username, client address) pair (`LOGIN_MAX_FAILURES` in
`LOGIN_FAILURE_WINDOW_SECONDS`), the address across usernames (`LOGIN_MAX_FAILURES_PER_ADDRESS`)
and the username across addresses (`LOGIN_MAX_FAILURES_PER_USERNAME` in
`LOGIN_USERNAME_WINDOW_SECONDS`). An attempt over any limit is refused (429) and reserves
nothing; one that succeeds gives its reservation back; one that fails keeps it, as a failure. So
of thousands of attempts sent at once, no more than the limit have their password checked, and
five mistyped passwords lock out that pair only, not everyone behind the same address.

Registrations are counted per address (`REGISTER_MAX_PER_MINUTE`).

Counts live in Redis when `REDIS_URL` is set (one Lua script per reservation: every worker and
host shares them), in the database with THROTTLE_STORE=database (what `serve --workers N` uses
without Redis: `repositories.throttle`), else in this process, in an LRU of bounded size. If
Redis cannot be reached, attempts go ahead (logged): an outage of the throttle must not become
an outage of logging in.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import RedisError

from asyncblog.config import Settings

if TYPE_CHECKING:
    from asyncblog.db.database import Database
from asyncblog.schemas import USERNAME_PATTERN

logger = logging.getLogger("asyncblog.throttle")
USERNAME = re.compile(USERNAME_PATTERN)
MEMORY_KEYS = 100_000  # in-process counts kept at most (oldest dropped first)
REDIS_CONNECTIONS = 16
REDIS_TIMEOUT = 5.0  # a Redis that has not answered by then is taken for down: fail open


@dataclass(frozen=True, slots=True)
class Limit:
    key: str
    max_count: int
    window: int  # seconds, from the first counted attempt


class Counter(Protocol):
    async def reserve(self, limits: Sequence[Limit]) -> float:
        """Count one attempt under every limit, or under none if any is full: 0.0 when
        counted, else the seconds until the fullest one frees."""

    async def release(self, keys: Sequence[str], *, clear: int = 0) -> None:
        """Give back one counted attempt under each key; the first `clear` keys are emptied
        instead (a login that succeeded forgets its pair's failures)."""

    async def close(self) -> None: ...


class MemoryCounter:
    """Counts in this process. Each call runs without awaiting, so on the event loop it is
    atomic. An OrderedDict as an LRU: a flood of distinct keys evicts the oldest in O(1),
    with no rebuild of the whole table."""

    def __init__(self, max_keys: int = MEMORY_KEYS) -> None:
        self.max_keys = max_keys
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def _live(self, key: str, now: float) -> tuple[int, float]:
        count, expires = self._counts.get(key, (0, 0.0))
        return (count, expires) if expires > now else (0, 0.0)

    async def reserve(self, limits: Sequence[Limit]) -> float:
        now = time.monotonic()
        wait = 0.0
        for limit in limits:
            count, expires = self._live(limit.key, now)
            if count >= limit.max_count:
                wait = max(wait, expires - now, 1.0)
        if wait:
            return wait
        for limit in limits:
            count, expires = self._live(limit.key, now)
            self._counts[limit.key] = (count + 1, expires or now + limit.window)
            self._counts.move_to_end(limit.key)
        while len(self._counts) > self.max_keys:
            self._counts.popitem(last=False)
        return 0.0

    async def release(self, keys: Sequence[str], *, clear: int = 0) -> None:
        now = time.monotonic()
        for index, key in enumerate(keys):
            count, expires = self._live(key, now)
            if count > 1 and index >= clear:
                self._counts[key] = (count - 1, expires)
            else:
                self._counts.pop(key, None)

    async def close(self) -> None:
        self._counts.clear()


# KEYS: the counters; ARGV: their maxima, then their windows in ms. Checks every limit first and
# counts under all or none, in one atomic step.
_RESERVE = """
local n = #KEYS
local wait = 0
for i = 1, n do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count >= tonumber(ARGV[i]) then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 1000 then ttl = 1000 end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for i = 1, n do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[n + i])
  end
end
return 0
"""
_RELEASE = """
for i = 1, #KEYS do
  if i <= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[i])
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    local left = redis.call('DECR', KEYS[i])
    if left <= 0 then redis.call('DEL', KEYS[i]) end
  end
end
return 0
"""


class RedisCounter:
    def __init__(self, url: str) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis

        # A bounded pool that waits for a free connection: redis-py's default opens one per
        # concurrent call, and a flood of attempts would then time out connecting, which the
        # throttle takes for an outage and lets through (seen: 199 of 500 at once). Its
        # timeouts are the event loop's, which a flood keeps busy: at 1 s, 500 attempts at once
        # on a loaded box timed some connects out and let 16 more guesses through.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_CONNECTIONS,
            timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        self.redis = Redis(connection_pool=pool)
        self._reserve = self.redis.register_script(_RESERVE)
        self._release = self.redis.register_script(_RELEASE)

    async def reserve(self, limits: Sequence[Limit]) -> float:
        keys = [f"asyncblog:throttle:{limit.key}" for limit in limits]
        args = [limit.max_count for limit in limits] + [limit.window * 1000 for limit in limits]
        wait_ms = int(await self._reserve(keys=keys, args=args))
        return wait_ms / 1000

    async def release(self, keys: Sequence[str], *, clear: int = 0) -> None:
        await self._release(keys=[f"asyncblog:throttle:{key}" for key in keys], args=[clear])

    async def close(self) -> None:
        await self.redis.aclose()


class Throttle:
    """The login and registration limits of the contract over one `Counter`."""

    def __init__(self, counter: Counter, settings: Settings) -> None:
        self.counter = counter
        s = settings
        self.pair = (s.login_max_failures, s.login_failure_window_seconds)
        self.address = (s.login_max_failures_per_address, s.login_failure_window_seconds)
        self.username = (s.login_max_failures_per_username, s.login_username_window_seconds)
        self.registrations = s.register_max_per_minute

    @classmethod
    def from_settings(cls, settings: Settings, db: Database | None = None) -> Throttle:
        store = settings.throttle_store
        if store == "auto":
            store = "redis" if settings.redis_url else "memory"
        counter: Counter
        if store == "redis":
            if not settings.redis_url:
                raise ValueError("THROTTLE_STORE=redis needs REDIS_URL")
            counter = RedisCounter(settings.redis_url)
        elif store == "database" and db is not None:
            from asyncblog.repositories.throttle import DatabaseCounter

            counter = DatabaseCounter(db)
        else:
            counter = MemoryCounter()
        return cls(counter, settings)

    def login_limits(self, username: str, client: str | None) -> list[Limit]:
        # A name no account can have shares one bucket: no unbounded keys from junk input.
        name = username.lower() if USERNAME.fullmatch(username) else "<malformed>"
        address = client or "<unknown>"
        return [
            Limit(f"pair:{name}:{address}", *self.pair),
            Limit(f"addr:{address}", *self.address),
            Limit(f"user:{name}", *self.username),
        ]

    async def reserve(self, limits: Sequence[Limit]) -> float:
        """0 if the attempt may go ahead (and is counted), else the seconds to wait."""
        try:
            return await self.counter.reserve(limits)
        except RedisError as exc:
            logger.warning("throttle unavailable, attempt let through: %s", exc)
            return 0.0

    async def release(self, limits: Sequence[Limit]) -> None:
        """An attempt that was neither a success nor a failed guess (an inactive user, the
        service unavailable): its place is given back everywhere."""
        try:
            await self.counter.release([limit.key for limit in limits])
        except RedisError as exc:
            logger.warning("throttle unavailable: %s", exc)

    async def succeeded(self, limits: Sequence[Limit]) -> None:
        """A login that succeeded: its pair forgets its failures, and the address and the
        username get this attempt's place back."""
        try:
            await self.counter.release([limit.key for limit in limits], clear=1)
        except RedisError as exc:
            logger.warning("throttle unavailable: %s", exc)

    async def registration(self, client: str | None) -> float:
        """Count a registration from this address: 0, or the seconds to wait (429)."""
        if not self.registrations:
            return 0.0
        limit = Limit(f"register:{client or '<unknown>'}", self.registrations, 60)
        return await self.reserve([limit])

    async def close(self) -> None:
        await self.counter.close()


def retry_after(wait: float) -> dict[str, str]:
    return {"Retry-After": str(math.ceil(wait))}

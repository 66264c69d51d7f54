"""The throttle's counts in the database (`asyncblog.throttle`, THROTTLE_STORE=database): for
several worker processes with no Redis, so that the limits hold across them as in one.

A reservation is one transaction: the limits' rows locked in key order (FOR UPDATE; SQLite's
writers take turns anyway), all checked, then all counted or none. First attempts racing to
insert the same key: one INSERT breaks the primary key (on MariaDB the waiters may deadlock),
and that reservation runs again: the row exists then. Expired rows are overwritten when their
key comes back, and deleted now and then.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from sqlalchemy import Double, Integer, String, Table, delete, insert, select, update

from asyncblog.db.database import Database, Writer
from asyncblog.db.statements import Statement
from asyncblog.errors import Busy, UniqueViolation
from asyncblog.models import ThrottleCount
from asyncblog.repositories.base import param

if TYPE_CHECKING:
    from asyncblog.throttle import Limit

_counts = cast(Table, ThrottleCount.__table__)
MAX_KEYS = 3  # limits per reservation: a login's three
PRUNE_EVERY = 500  # reservations between two deletions of expired rows
ATTEMPTS = 5

_LOCK = Statement(
    lambda: (
        select(_counts.c.key, _counts.c.count, _counts.c.expires_at)
        .where(_counts.c.key.in_([param(f"k{i}", String) for i in range(MAX_KEYS)]))
        .order_by(_counts.c.key)
        .with_for_update()
    )
)
_SET = Statement(
    lambda: (
        update(_counts)
        .where(_counts.c.key == param("key", String))
        .values(count=param("count", Integer), expires_at=param("expires", Double))
    )
)
_ADD = Statement(
    lambda: insert(_counts).values(
        key=param("key", String), count=param("count", Integer), expires_at=param("expires", Double)
    )
)
_FORGET = Statement(lambda: delete(_counts).where(_counts.c.key == param("key", String)))
_PRUNE = Statement(lambda: delete(_counts).where(_counts.c.expires_at < param("now", Double)))


class DatabaseCounter:
    """`asyncblog.throttle.Counter` over the `throttle_counts` table."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._reservations = 0

    async def reserve(self, limits: Sequence[Limit]) -> float:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self.db.writer() as link, link.transaction():
                    return await self._reserve(link, limits)
            except (UniqueViolation, Busy):
                # Concurrent first attempts inserted the same key: one breaks the primary key,
                # or, on MariaDB, those waiting on the insert deadlock. The rows exist now.
                if attempt == ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))  # noqa: S311
        raise AssertionError("unreachable")

    async def _reserve(self, link: Writer, limits: Sequence[Limit]) -> float:
        now = time.time()
        rows = await _locked(link, [limit.key for limit in limits])
        wait = 0.0
        for limit in limits:
            count, expires = _live(rows.get(limit.key), now)
            if count >= limit.max_count:
                wait = max(wait, expires - now, 1.0)
        if wait:
            return wait
        for limit in limits:
            count, expires = _live(rows.get(limit.key), now)
            values = {
                "key": limit.key,
                "count": count + 1,
                "expires": expires or now + limit.window,
            }
            await link.count(_SET if limit.key in rows else _ADD, **values)
        self._reservations += 1
        if self._reservations % PRUNE_EVERY == 0:
            await link.count(_PRUNE, now=now)
        return 0.0

    async def release(self, keys: Sequence[str], *, clear: int = 0) -> None:
        async with self.db.writer() as link, link.transaction():
            now = time.time()
            rows = await _locked(link, list(keys))
            for index, key in enumerate(keys):
                if key not in rows:
                    continue
                count, expires = _live(rows[key], now)
                if count > 1 and index >= clear:
                    await link.count(_SET, key=key, count=count - 1, expires=expires)
                else:
                    await link.count(_FORGET, key=key)

    async def close(self) -> None:
        return None


async def _locked(link: Writer, keys: list[str]) -> dict[str, tuple[int, float]]:
    assert len(keys) <= MAX_KEYS
    params = {f"k{i}": keys[i] if i < len(keys) else None for i in range(MAX_KEYS)}
    return {row[0]: (int(row[1]), float(row[2])) for row in await link.rows(_LOCK, **params)}


def _live(row: tuple[int, float] | None, now: float) -> tuple[int, float]:
    if row is None or row[1] <= now:
        return 0, 0.0
    return row

"""Admission to the database and the driver-level connections of the hot read.

- `SlotGate`: how requests queue for one of the pool's connections, first come first served.
- `DriverPool`: asyncpg connections kept for `Database.driver_reader`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg


class SlotGate:
    """`size` slots, handed out first come, first served.

    A released slot goes straight to the longest waiter: a newcomer cannot take it while that
    waiter is being woken (a connection pool's own queue lets it). A waiter gives up after
    `timeout` seconds with TimeoutError.

    asyncio's Semaphore is as fair since Python 3.11.1; this exists for cost, as every request
    passes here. A free slot is one integer decrement; a wait is one future. All waiters have
    the same timeout, so the queue is also in deadline order, and one timer for the oldest
    waiter (`_reap`) serves the whole queue: `asyncio.timeout` around each wait cost about a
    sixth of the throughput at 256 connections.
    """

    def __init__(self, size: int, timeout: float) -> None:
        self._free = size
        self.timeout = timeout
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._reaper: asyncio.TimerHandle | None = None

    async def acquire(self) -> None:
        if self._free > 0:  # a free slot implies nobody waits: release() hands over directly
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append((loop.time() + self.timeout, waiter))
        if self._reaper is None:
            self._reaper = loop.call_at(self._waiters[0][0], self._reap, loop)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed a slot, but cancelled before taking it: pass it on
            raise  # a waiter that gave up stays queued as a done future; it is skipped

    def release(self) -> None:
        while self._waiters:
            _deadline, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        """Time out the waiters whose deadline has passed (the oldest ones), then wait for the
        next deadline."""
        self._reaper = None
        now = loop.time()
        waiters = self._waiters
        while waiters and (waiters[0][0] <= now or waiters[0][1].done()):
            _deadline, waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_exception(TimeoutError())
        if waiters:
            self._reaper = loop.call_at(waiters[0][0], self._reap, loop)


# What asyncpg raises when a connection or its statement fails.
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(slots=True)
class _Idle:
    connection: asyncpg.Connection
    returned: float


class DriverPool:
    """asyncpg connections kept for reuse, most recently returned first.

    It only keeps connections: how many are in use at once, and who gets one first, is decided
    before, by the `SlotGate`. So there is no queue, timer or task per checkout here (asyncpg's
    own Pool spends about 12 us per checkout on those, a tenth of the hot read), and no reset
    round trip: the connections only run single autocommit SELECTs.

    Like SQLAlchemy's pool as `db.create_engine` sets it up, it pings a connection that sat
    idle for `ping_after_idle` seconds before handing it out, replaces one older than `recycle`
    seconds, and drops every idle connection after a disconnect (`expire`).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        recycle: float = -1,
        ping_after_idle: float = 2.0,
        ping_timeout: float = 2.0,
    ) -> None:
        self._connect = connect
        self._recycle = recycle
        self._ping_after_idle = ping_after_idle
        self._ping_timeout = ping_timeout
        self._idle: list[_Idle] = []
        self._opened: dict[asyncpg.Connection, float] = {}
        self._closed = False

    async def acquire(self) -> asyncpg.Connection:
        while self._idle:
            idle = self._idle.pop()
            con = idle.connection
            now = time.monotonic()
            if con.is_closed():
                self._opened.pop(con, None)
            elif 0 <= self._recycle < now - self._opened[con]:
                self._discard(con)
            elif now - idle.returned < self._ping_after_idle or await self._alive(con):
                return con
            else:  # a dead one: those that sat idle as long are likely dead too
                self._discard(con)
                self.expire()
        con = await self._connect()
        self._opened[con] = time.monotonic()
        return con

    def release(self, con: asyncpg.Connection, *, reusable: bool = True) -> None:
        """Keep `con` for the next acquire; with `reusable=False` (it failed or was cancelled
        mid-statement) it is terminated instead."""
        if (
            self._closed
            or not reusable
            or con not in self._opened
            or con.is_closed()
            or con.is_in_transaction()
        ):
            self._discard(con)
        else:
            self._idle.append(_Idle(con, time.monotonic()))

    def expire(self) -> None:
        """The server went away: none of the idle connections is worth a try."""
        idle, self._idle = self._idle, []
        for entry in idle:
            self._discard(entry.connection)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        try:
            while idle:
                con = idle.pop().connection
                self._opened.pop(con, None)
                try:
                    await asyncio.wait_for(con.close(), 5)
                except DRIVER_ERRORS:
                    con.terminate()
        finally:  # cancelled or failed midway: the rest go without a goodbye
            for entry in idle:
                self._discard(entry.connection)

    @property
    def size(self) -> int:
        """Open connections, idle or in use."""
        return len(self._opened)

    async def _alive(self, con: asyncpg.Connection) -> bool:
        try:
            await con.execute("SELECT 1", timeout=self._ping_timeout)
        except DRIVER_ERRORS:
            return False
        except BaseException:  # cancelled mid-ping: the connection is in no state to keep
            self._discard(con)
            raise
        return True

    def _discard(self, con: asyncpg.Connection) -> None:
        self._opened.pop(con, None)
        con.terminate()

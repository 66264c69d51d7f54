"""Admission to the database: requests take one of `POOL_SIZE` slots, first come, first served,
before they touch the pool (`Admission.slot()`), and give it back while they do slow work that
needs no connection (`slot_released()`, around Argon2).

On SQLite, writers have a lane of their own (one slot: SQLite has one writer at a time). In WAL
mode readers never wait for the writer, so a writer queued behind hundreds of readers waited for
nothing (measured: 189 -> 22 writes/s as readers went from 16 to 256); and writers queued here,
in order, no longer poll SQLite's busy timeout for the write lock."""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from asyncblog.errors import Unavailable
from asyncblog.metrics import GATE_TIMEOUTS

POOL_BUSY = "Too many requests are waiting for the database; retry shortly"


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
        self.size = size
        self._free = size
        self.timeout = timeout
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._reaper: asyncio.TimerHandle | None = None

    def take_free(self) -> bool:
        """Take a free slot if there is one, without waiting (a free slot implies nobody waits:
        `release()` hands over directly)."""
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.take_free():
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

    @property
    def free(self) -> int:
        return self._free

    @property
    def waiting(self) -> int:
        """Waiters still queued (one that gave up is skipped, not yet removed)."""
        return sum(1 for _deadline, waiter in self._waiters if not waiter.done())

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


@dataclass(slots=True)
class Lease:
    """The slot the current task holds, the gate it came from, and how to forget it."""

    admission: Admission
    gate: SlotGate
    token: contextvars.Token[Lease | None] | None = None
    held: bool = True


_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "asyncblog_slot_lease", default=None
)


class Admission:
    """The gate in front of one pool: `async with admission.slot(): ...`.

    The pools' own queues let a newcomer take a connection that was just returned while an older
    waiter is still being woken up; under overload a few requests then starve for seconds.
    Gating checkouts with a FIFO `SlotGate` as large as the pool keeps waiting times in arrival
    order. A wait longer than the pool timeout raises Unavailable (a 503 with Retry-After).

    Re-entrant within a task: a request that holds a slot and needs another connection does not
    wait for a second slot, which could otherwise deadlock once every slot is held so.
    """

    def __init__(self, size: int, timeout: float, *, writers: int = 0) -> None:
        self.size = max(size, 1)
        self.timeout = timeout
        self.gate = SlotGate(self.size, timeout)
        self.write_gate = SlotGate(writers, timeout) if writers else self.gate
        self.capacity = self.size + writers  # units of work at once, in all lanes

    def slot(self, *, write: bool = False) -> _SlotHold:
        return _SlotHold(self, write)

    async def take(self, gate: SlotGate | None = None) -> None:
        try:
            await (gate or self.gate).acquire()
        except TimeoutError:
            GATE_TIMEOUTS.inc()
            raise Unavailable(POOL_BUSY) from None

    async def enter(self, *, write: bool = False) -> Lease | None:
        """A slot for the current task, or None when it holds one of this gate already (the
        slot it holds covers this too). Give it back with `leave`."""
        held = _lease.get()
        if held is not None and held.admission is self and held.held:
            return None
        gate = self.write_gate if write else self.gate
        if not gate.take_free():
            await self.take(gate)
        lease = Lease(self, gate)
        lease.token = _lease.set(lease)
        return lease

    @staticmethod
    def leave(lease: Lease | None) -> None:
        if lease is None:
            return
        try:
            _lease.reset(lease.token)  # type: ignore[arg-type]
        except ValueError:  # left in another context than entered: clear it there
            _lease.set(None)
        if lease.held:
            lease.held = False  # a child task that copied the context must not use it now
            lease.gate.release()

    def usage(self) -> tuple[int, int, int]:
        """(slots, slots in use, units of work waiting) in every lane, for the metrics."""
        gates = {id(g): g for g in (self.gate, self.write_gate)}.values()
        in_use = sum(g.size - g.free for g in gates)
        return self.capacity, in_use, sum(g.waiting for g in gates)


class _SlotHold:
    """`Admission.slot()`: a plain async context manager (a generator-based one costs a few
    microseconds more)."""

    __slots__ = ("_admission", "_lease", "_write")

    def __init__(self, admission: Admission, write: bool) -> None:
        self._admission = admission
        self._write = write
        self._lease: Lease | None = None

    async def __aenter__(self) -> None:
        self._lease = await self._admission.enter(write=self._write)

    async def __aexit__(self, *exc_info: object) -> None:
        self._admission.leave(self._lease)


@asynccontextmanager
async def slot_released() -> AsyncIterator[None]:
    """Give the current task's slot back during slow work that needs no connection (Argon2 in a
    thread), and queue for one again afterwards. The caller must not hold a connection
    meanwhile (commit first)."""
    lease = _lease.get()
    if lease is None or not lease.held:
        yield
        return
    lease.held = False
    lease.gate.release()
    yield  # failed or cancelled: the request is over, it needs no slot again
    await lease.admission.take(lease.gate)  # Unavailable if too long: lease stays released
    lease.held = True

"""The admission gate (`SlotGate`) and the hot read's connection keeper (`DriverPool`).

The gate is plain asyncio. The pool's tests connect to the PostgreSQL server for real (its
`postgres` database: no schema is needed), and skip or fail (CI) like the other backend tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from asyncblog.db import Database, _lease, slot_released
from asyncblog.pools import DriverPool, SlotGate
from tests.conftest import PG_ADMIN, unavailable

# ---------------------------------------------------------------------------- SlotGate


async def test_slots_go_to_waiters_in_arrival_order() -> None:
    gate = SlotGate(1, timeout=5)
    await gate.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await gate.acquire()
        order.append(n)
        gate.release()

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(waiter(n)))
        await asyncio.sleep(0)  # queued in this order
    gate.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_newcomer_cannot_take_a_slot_handed_to_a_waiter() -> None:
    """The released slot belongs to the waiter even before it wakes up."""
    gate = SlotGate(1, timeout=5)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # handed to `waiter`, which has not run yet
    newcomer = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    await waiter
    assert not newcomer.done()  # it queues behind
    gate.release()
    await asyncio.wait_for(newcomer, 1)


async def test_a_waiter_gives_up_after_the_timeout_and_leaves_the_queue() -> None:
    gate = SlotGate(1, timeout=0.05)
    await gate.acquire()
    with pytest.raises(TimeoutError):
        await gate.acquire()
    gate.release()
    await asyncio.wait_for(gate.acquire(), 1)  # the slot was not handed to the gone waiter


async def test_each_waiter_times_out_at_its_own_deadline() -> None:
    gate = SlotGate(1, timeout=0.1)
    await gate.acquire()
    early = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.05)
    late = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.07)  # past early's deadline, not late's
    assert early.done() and isinstance(early.exception(), TimeoutError)
    assert not late.done()
    gate.release()  # goes to `late`, the early one having left
    await asyncio.wait_for(late, 1)


async def test_many_waiters_time_out_and_the_gate_still_works() -> None:
    gate = SlotGate(2, timeout=0.05)
    await gate.acquire()
    await gate.acquire()
    results = await asyncio.gather(*(gate.acquire() for _ in range(200)), return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    gate.release()
    gate.release()
    await asyncio.wait_for(gate.acquire(), 1)
    await asyncio.wait_for(gate.acquire(), 1)


async def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    gate = SlotGate(1, timeout=5)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the slot went on to `second`, not lost


async def test_free_slots_are_taken_without_waiting() -> None:
    gate = SlotGate(3, timeout=0.01)
    for _ in range(3):
        await gate.acquire()
    with pytest.raises(TimeoutError):
        await gate.acquire()
    for _ in range(3):
        gate.release()
    for _ in range(3):
        await gate.acquire()


async def test_a_child_task_cannot_use_the_slot_after_its_request_let_it_go() -> None:
    """Tasks started inside a slot (Argon2 hashing in `gather`) copy the lease; once the
    request has left its slot, the lease says so, and they cannot give back a slot they do
    not own."""
    db = Database(create_async_engine("sqlite+aiosqlite://"))
    try:
        async with db.connection_slot():
            lease = _lease.get()
            assert lease is not None and lease.held
        assert not lease.held
        async with slot_released():  # outside any slot: nothing to give back
            pass
    finally:
        await db.dispose()


# ---------------------------------------------------------------------------- DriverPool


def _dsn() -> str:
    url = make_url(PG_ADMIN)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Server:
    """Connects to the PostgreSQL server and closes, at the end, whatever it opened."""

    opened: list[asyncpg.Connection] = field(default_factory=list)

    async def connect(self) -> asyncpg.Connection:
        con = await asyncpg.connect(_dsn(), timeout=5)
        self.opened.append(con)
        return con


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    try:
        (await asyncpg.connect(_dsn(), timeout=5)).terminate()
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable("postgresql", exc)
    server = Server()
    yield server
    for con in server.opened:
        con.terminate()


def _pool(server: Server, **options: float) -> DriverPool:
    return DriverPool(server.connect, **options)


async def test_a_returned_connection_is_reused(server: Server) -> None:
    pool = _pool(server)
    con = await pool.acquire()
    pool.release(con)
    assert await pool.acquire() is con
    assert len(server.opened) == 1


async def test_most_recently_returned_first(server: Server) -> None:
    pool = _pool(server)
    a, b = await pool.acquire(), await pool.acquire()
    pool.release(a)
    pool.release(b)
    assert await pool.acquire() is b
    assert pool.size == 2


async def test_a_connection_that_failed_is_closed_not_reused(server: Server) -> None:
    pool = _pool(server)
    con = await pool.acquire()
    pool.release(con, reusable=False)
    assert con.is_closed()
    assert await pool.acquire() is not con
    assert pool.size == 1


async def test_a_connection_left_in_a_transaction_is_not_reused(
    server: Server,
) -> None:
    pool = _pool(server)
    con = await pool.acquire()
    await con.execute("BEGIN")
    pool.release(con)
    assert con.is_closed()
    assert await pool.acquire() is not con


async def test_a_connection_the_server_closed_is_skipped(server: Server) -> None:
    pool = _pool(server)
    con = await pool.acquire()
    pid = con.get_server_pid()
    pool.release(con)
    killer = await asyncpg.connect(_dsn())
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await killer.close()
    for _ in range(50):  # asyncpg notices the closed socket when the loop runs
        if con.is_closed():
            break
        await asyncio.sleep(0.02)
    fresh = await pool.acquire()
    assert fresh is not con
    assert await fresh.fetchval("SELECT 1") == 1


async def test_an_idle_connection_is_pinged_and_a_dead_one_replaced(
    server: Server,
) -> None:
    """A connection idle for `ping_after_idle` is checked before use. One that the client
    still believes open but that no longer answers is dropped: simulated by a ping that
    fails (its protocol is already busy with another statement)."""
    pool = _pool(server, ping_after_idle=0)
    con = await pool.acquire()
    pool.release(con)
    assert await pool.acquire() is con  # pinged, alive: reused
    busy = asyncio.create_task(con.execute("SELECT pg_sleep(0.3)"))
    await asyncio.sleep(0.05)
    pool.release(con)  # back while busy: the ping fails with "another operation in progress"
    fresh = await pool.acquire()
    assert fresh is not con
    assert await fresh.fetchval("SELECT 1") == 1
    await asyncio.gather(busy, return_exceptions=True)


async def test_an_old_connection_is_recycled(server: Server) -> None:
    pool = _pool(server, recycle=0)
    con = await pool.acquire()
    pool.release(con)
    await asyncio.sleep(0.01)
    assert await pool.acquire() is not con
    assert con.is_closed()


async def test_expire_drops_every_idle_connection(server: Server) -> None:
    pool = _pool(server)
    a, b = await pool.acquire(), await pool.acquire()
    pool.release(a)
    pool.release(b)
    pool.expire()
    assert a.is_closed() and b.is_closed()
    assert pool.size == 0


async def test_after_close_a_returned_connection_is_closed(server: Server) -> None:
    pool = _pool(server)
    idle, busy = await pool.acquire(), await pool.acquire()
    pool.release(idle)
    await pool.close()
    assert idle.is_closed()
    pool.release(busy)
    assert busy.is_closed()
    assert pool.size == 0

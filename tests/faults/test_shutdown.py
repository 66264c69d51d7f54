"""Graceful shutdown of a real `asyncblog serve` process (PostgreSQL-specific: the throwaway
cluster's pg_stat_activity and server log are the witnesses).

SIGTERM while transfers are in flight (held inside the database by a row lock): the server stops
accepting connections, lets the in-flight requests finish, exits within a bound, and disposes of
its pool: its connections end with a proper Terminate message, not a dropped socket. Each
transfer either completed (201 and a ledger row) or never happened.

How "disposed" is seen: the test database logs at DEBUG1, where PostgreSQL reports a client that
vanished without saying goodbye ("unexpected EOF on client connection"). A process killed with
its pool open leaves one such line per pooled connection (the control test shows the detector
works); a disposed pool leaves none.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import asyncpg
import httpx

from tests.fixtures.cluster import APP_NAME, PgDatabase
from tests.fixtures.faults import (
    assert_created_are_recorded,
    assert_invariants,
    ends_within,
    members,
    send,
)
from tests.fixtures.servers import serving

IN_FLIGHT = 8
SERVER = {
    "STATEMENT_TIMEOUT_MS": "30000",  # the lock waits are ended by us, not by the timeout
    "POOL_SIZE": "10",
    "POOL_MAX_OVERFLOW": "2",
}


async def log_debug1(db: PgDatabase) -> int:
    """Make this database's sessions log at DEBUG1; returns the log's current size."""
    async with db.engine.connect() as conn:
        await conn.exec_driver_sql(f"ALTER DATABASE {db.name} SET log_min_messages = 'debug1'")
        await conn.commit()
    return db.cluster.log_file.stat().st_size


def vanished_clients(db: PgDatabase, offset: int) -> list[str]:
    """Server log lines since `offset`: app connections to this database that ended without a
    Terminate message."""
    with db.cluster.log_file.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return [
        line
        for line in lines
        if f"@{db.name} app={APP_NAME}" in line and "unexpected EOF on client connection" in line
    ]


async def wait_for_lock_waiters(db: PgDatabase, n: int) -> None:
    for _ in range(200):
        waiting = [c for c in await db.app_connections() if c["wait_event_type"] == "Lock"]
        if len(waiting) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the transfers never queued on the lock: {await db.app_connections()}")


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_sigterm_lets_in_flight_transfers_finish_and_disposes_of_the_pool(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    offset = await log_debug1(pg_database)
    async with serving(pg_database.url, tmp_path, **SERVER) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
            _, (a, b) = await members(client, pg_database.engine, 2)
            holder = await asyncpg.connect(pg_database.cluster.dsn(pg_database.name))
            try:
                await holder.execute("BEGIN")
                await holder.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", a.id)
                in_flight = [asyncio.create_task(send(client, a, b)) for _ in range(IN_FLIGHT)]
                await wait_for_lock_waiters(pg_database, IN_FLIGHT)

                server.process.send_signal(signal.SIGTERM)
                for _ in range(100):  # it stops accepting...
                    if await refuses_connections(server.port):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("still accepting connections 5 s after SIGTERM")
                # ... but keeps the requests it has: they are still waiting on the lock.
                assert not any(t.done() for t in in_flight), [t.result() for t in in_flight]
                assert server.running, "exited with requests in flight"
            finally:
                await holder.close()  # the lock goes: the in-flight transfers proceed
            responses = await ends_within(asyncio.gather(*in_flight), "in-flight transfers", 30)

        code = await server.exit_code(30)
        output = server.output()
        assert code in (0, -signal.SIGTERM), output[-3000:]
        assert [r.status_code for r in responses] == [201] * IN_FLIGHT, [
            (r.status_code, r.text) for r in responses
        ]
        assert "Application shutdown complete" in output, output[-3000:]
        assert "Traceback" not in output, output[-3000:]

    assert await pg_database.app_connections() == [], "connections of the app outlived it"
    assert vanished_clients(pg_database, offset) == [], "the pool was not disposed of"
    book = await assert_invariants(pg_database.engine)
    assert_created_are_recorded(responses, book)
    assert len(book.transfer_ids) == IN_FLIGHT


async def test_control_a_killed_server_leaves_its_pool_undisposed(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    """The detector of the test above works: SIGKILL (no shutdown at all) leaves the pooled
    connections to be noticed by PostgreSQL as clients that vanished."""
    offset = await log_debug1(pg_database)
    async with serving(pg_database.url, tmp_path, **SERVER) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            assert (await client.get("/users")).status_code == 200  # a pooled connection
        server.process.kill()
        await server.exit_code(10)
    for _ in range(50):
        if vanished_clients(pg_database, offset):
            break
        await asyncio.sleep(0.1)
    assert vanished_clients(pg_database, offset), "the detector saw nothing"


async def test_requests_still_running_after_shutdown_timeout_are_cut_off(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    """SIGTERM with a transfer that cannot finish (a row lock held past SHUTDOWN_TIMEOUT): the
    process exits at the timeout, not later, the transfer's transaction is rolled back (nothing
    moved), and no connection of the app is left behind."""
    grace = 2
    settings = {**SERVER, "SHUTDOWN_TIMEOUT": str(grace)}
    async with (
        serving(pg_database.url, tmp_path, **settings) as server,
        httpx.AsyncClient(base_url=server.base, timeout=60) as client,
    ):
        _, (a, b) = await members(client, pg_database.engine, 2)
        holder = await asyncpg.connect(pg_database.cluster.dsn(pg_database.name))
        try:
            await holder.execute("BEGIN")
            await holder.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", a.id)
            stuck = asyncio.create_task(send(client, a, b))
            await wait_for_lock_waiters(pg_database, 1)
            started = asyncio.get_running_loop().time()
            server.process.send_signal(signal.SIGTERM)
            await server.exit_code(grace + 15)
            took = asyncio.get_running_loop().time() - started
            # the setting, plus 5 s of slack for the pool's disposal on a loaded machine
            assert grace <= took < grace + 5, took
            with contextlib.suppress(httpx.HTTPError):
                answer = await stuck
                assert answer.status_code >= 500, answer.text
        finally:
            await holder.close()
    for _ in range(50):  # PostgreSQL notices the cut-off connection's end
        if not await pg_database.app_connections():
            break
        await asyncio.sleep(0.1)
    assert await pg_database.app_connections() == []
    book = await assert_invariants(pg_database.engine)
    assert len(book.transfer_ids) == 0, "the cut-off transfer moved money"

"""A slow or hung database (PostgreSQL-specific, except the lock test that runs on all three
backends): a statement stuck behind a row lock is cut by STATEMENT_TIMEOUT_MS and answered 503,
and its connection goes back to the pool; a connection whose bytes stop flowing (a stalled
network, a frozen server) must not hang the request either.
"""

from __future__ import annotations

import asyncpg

from tests.fixtures.app import empty_tables
from tests.fixtures.cluster import PgDatabase
from tests.fixtures.databases import Backend, settings_for
from tests.fixtures.faults import (
    assert_db_unavailable,
    assert_invariants,
    ends_within,
    lock_user,
    members,
    send,
)
from tests.fixtures.metrics import counted
from tests.fixtures.proxy import FaultProxy
from tests.fixtures.servers import in_process_app


async def test_statement_timeout_turns_a_lock_wait_into_503_and_frees_the_connection(
    pg_database: PgDatabase,
) -> None:
    # ONE connection in the pool: if a timed-out request kept it, the next request would wait
    # for it and get the pool's own 503 ("Too many requests ..."), not the database's.
    settings = settings_for(
        pg_database.url,
        statement_timeout_ms=500,
        pool_size=1,
        pool_max_overflow=0,
        pool_timeout=3,
    )
    timed_out = counted("asyncblog_db_errors_total", kind="timed_out")
    async with in_process_app(settings) as api:
        _, (a, b) = await members(api.client, pg_database.engine, 2)
        holder = await asyncpg.connect(pg_database.cluster.dsn(pg_database.name))
        try:
            await holder.execute("BEGIN")
            await holder.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", a.id)
            for attempt in range(3):
                response = await ends_within(send(api.client, a, b), "transfer behind a lock")
                assert_db_unavailable(response, f"attempt {attempt}")
                # Cancelled on the server, rolled back, back in the pool: nothing of the app
                # waits on the lock or sits in a transaction.
                connections = await pg_database.app_connections()
                assert connections, "the app's pooled connection is gone"
                assert all(c["state"] == "idle" for c in connections), connections
            other = await ends_within(api.client.get(f"/users/{b.id}"), "GET /users/{id}")
            assert other.status_code == 200, other.text
            reverse = await ends_within(send(api.client, b, a), "b -> a behind the lock")
            assert_db_unavailable(reverse, "the lock on a blocks b -> a too")
            # each cancelled statement counted as a timeout (asyncblog_db_errors_total)
            assert counted("asyncblog_db_errors_total", kind="timed_out") - timed_out == 4
        finally:
            await holder.close()  # ends the transaction: the lock is released

        response = await ends_within(send(api.client, a, b), "the same transfer, lock released")
        assert response.status_code == 201, response.text

    book = await assert_invariants(pg_database.engine)
    assert len(book.transfer_ids) == 1, "the timed-out attempts moved nothing"


async def test_a_transfer_stuck_behind_a_lock_is_503_on_every_backend(backend: Backend) -> None:
    """The same fault on SQLite (another writer holds the write lock: SQLITE_BUSY_TIMEOUT_MS),
    PostgreSQL (statement_timeout) and MariaDB (max_statement_time / innodb_lock_wait_timeout)."""
    settings = settings_for(
        backend.url,
        statement_timeout_ms=500,
        sqlite_busy_timeout_ms=500,
        pool_size=1,
        pool_max_overflow=0,
        pool_timeout=5,
    )
    try:
        async with in_process_app(settings) as api:
            _, (a, b) = await members(api.client, backend.engine, 2)
            async with lock_user(backend.engine, a.id) as holder:
                response = await ends_within(send(api.client, a, b), "transfer behind a lock", 30)
                assert response.status_code == 503, response.text
                assert response.headers.get("retry-after") == "1", response.headers
                assert isinstance(response.json()["detail"], str)
                # The pool's only connection came back: a read answers.
                other = await ends_within(api.client.get(f"/users/{b.id}"), "a read")
                assert other.status_code == 200, other.text
                await holder.rollback()
            response = await ends_within(send(api.client, a, b), "transfer after the lock")
            assert response.status_code == 201, response.text
        book = await assert_invariants(backend.engine)
        assert len(book.transfer_ids) == 1
    finally:
        await empty_tables(backend.engine)


async def test_a_stalled_connection_does_not_hang_a_transfer(
    pg_database: PgDatabase, proxy: FaultProxy
) -> None:
    """The network stops carrying bytes while the pool holds live connections. The server never
    sees the statement, so statement_timeout cannot fire: only a client-side bound can end the
    request. It must end (503), not hang."""
    settings = settings_for(
        pg_database.url_via(proxy), statement_timeout_ms=500, pool_size=2, pool_max_overflow=0
    )
    async with in_process_app(settings, proxy) as api:
        _, (a, b) = await members(api.client, pg_database.engine, 2)
        proxy.stall()
        response = await ends_within(
            send(api.client, a, b), "POST /transfers on a stalled connection", on_hang=proxy.cut
        )
        assert_db_unavailable(response, "POST /transfers on a stalled connection")
        await proxy.heal()
        again = await ends_within(send(api.client, a, b), "transfer after the stall")
        assert again.status_code == 201, again.text
    await assert_invariants(pg_database.engine)


async def test_a_stalled_connection_does_not_hang_readiness(
    pg_database: PgDatabase, proxy: FaultProxy
) -> None:
    """/readyz is bounded by READINESS_TIMEOUT (1 s) even when its connection stalls, and it
    still answers afterwards."""
    settings = settings_for(pg_database.url_via(proxy), pool_size=2, pool_max_overflow=0)
    async with in_process_app(settings, proxy) as api:
        assert (await api.client.get("/readyz")).status_code == 200
        proxy.stall()
        for _ in range(3):
            ready = await ends_within(
                api.client.get("/readyz"), "/readyz on a stalled connection", 5, proxy.cut
            )
            assert ready.status_code == 503, ready.text
        await proxy.heal()
        ready = await ends_within(api.client.get("/readyz"), "/readyz after the stall", 5)
        assert ready.status_code == 200, ready.text

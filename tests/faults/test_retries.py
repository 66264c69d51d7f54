"""The transfer's retry, provoked for real on PostgreSQL (the throwaway cluster; and MariaDB's
deadlock, error 1213, at the end): a deadlock
(40P01) and a serialization failure (40001) make an attempt run again, counted
(`asyncblog_transfers_total{outcome="retried"}`); five deadlocks in a row give up with a 503
that moved no money. PostgreSQL's own deadlock counter confirms each deadlock happened.

How a deadlock is made: the app locks both users' rows in id order, so another connection holds
the second row, waits until the app's transfer queues behind it, then asks for the first row,
which the app holds: a cycle. The app's backend started waiting first and has the shorter
`deadlock_timeout`, so it is the one PostgreSQL aborts. The other connection takes the first row
inside a savepoint and rolls back to it, ready to trap the next attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiomysql
import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from asyncblog import migrations
from tests.fixtures.cluster import PgDatabase
from tests.fixtures.databases import drop_database, new_database, settings_for
from tests.fixtures.faults import Member, assert_invariants, members, send
from tests.fixtures.metrics import counted
from tests.fixtures.servers import in_process_app

APP_DEADLOCK_TIMEOUT = "50ms"


def retried() -> float:
    return counted("asyncblog_transfers_total", outcome="retried")


def given_up() -> float:
    return counted("asyncblog_transfers_total", outcome="given_up")


async def deadlocks(db: PgDatabase) -> int:
    """PostgreSQL's count of the deadlocks detected in the database."""
    conn = await asyncpg.connect(db.cluster.dsn(db.name))
    try:
        sql = "SELECT deadlocks FROM pg_stat_database WHERE datname = $1"
        count: int = await conn.fetchval(sql, db.name)
        return count
    finally:
        await conn.close()


async def deadlocks_reach(db: PgDatabase, n: int) -> None:
    """Wait until PostgreSQL counted `n` deadlocks (a backend reports its counts when it ends:
    after the app's pool is disposed)."""
    for _ in range(200):
        if await deadlocks(db) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"PostgreSQL counted {await deadlocks(db)} deadlocks, not {n}")


async def app_waits_for_a_lock(db: PgDatabase) -> None:
    for _ in range(400):
        if any(c["wait_event_type"] == "Lock" for c in await db.app_connections()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the transfer never queued on the lock: {await db.app_connections()}")


async def hold(db: PgDatabase, row: Member) -> asyncpg.Connection:
    """Another connection, in a transaction that holds `row`'s lock."""
    conn = await asyncpg.connect(db.cluster.dsn(db.name))
    await conn.execute("SET deadlock_timeout = '60s'")  # never the one PostgreSQL aborts
    await conn.execute("BEGIN")
    await conn.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", row.id)
    return conn


async def spring(db: PgDatabase, holder: asyncpg.Connection, first: Member, times: int) -> None:
    """Deadlock the app's transfer `times` times: each time it queues behind `holder`'s row,
    ask for `first`'s row, which it holds."""
    for _ in range(times):
        await app_waits_for_a_lock(db)
        await holder.execute("SAVEPOINT trap")
        # Blocks until PostgreSQL aborts the app's attempt, which releases the first row.
        await holder.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", first.id)
        await holder.execute("ROLLBACK TO SAVEPOINT trap")  # the first row is free again


async def test_a_deadlocked_transfer_is_retried_and_completes(pg_database: PgDatabase) -> None:
    await pg_database.set_default("deadlock_timeout", APP_DEADLOCK_TIMEOUT)
    async with in_process_app(settings_for(pg_database.url)) as api:
        _, users = await members(api.client, pg_database.engine, 2)
        first, second = sorted(users, key=lambda m: m.id)  # the app locks in this order
        before = retried(), given_up(), counted("asyncblog_db_errors_total", kind="busy")
        holder = await hold(pg_database, second)
        sent = asyncio.create_task(send(api.client, first, second))
        await spring(pg_database, holder, first, times=1)
        await holder.execute("ROLLBACK")  # the retry gets both rows now
        response: httpx.Response = await asyncio.wait_for(sent, 30)
        assert response.status_code == 201, response.text
        assert response.json()["amount"] == "1.00"
        after = retried(), given_up(), counted("asyncblog_db_errors_total", kind="busy")
        assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, 0, 1)
    await holder.close()
    await deadlocks_reach(pg_database, 1)
    book = await assert_invariants(pg_database.engine)
    assert len(book.transfer_ids) == 1, "exactly the retried transfer moved money"


async def test_five_deadlocks_in_a_row_give_up_with_503_and_move_nothing(
    pg_database: PgDatabase,
) -> None:
    await pg_database.set_default("deadlock_timeout", APP_DEADLOCK_TIMEOUT)
    async with in_process_app(settings_for(pg_database.url)) as api:
        _, users = await members(api.client, pg_database.engine, 2)
        first, second = sorted(users, key=lambda m: m.id)
        before = retried(), given_up()
        holder = await hold(pg_database, second)
        sent = asyncio.create_task(send(api.client, first, second))
        await spring(pg_database, holder, first, times=5)
        response: httpx.Response = await asyncio.wait_for(sent, 30)
        await holder.execute("ROLLBACK")
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert "contention" in response.json()["detail"]
        assert (retried() - before[0], given_up() - before[1]) == (4, 1)
    await holder.close()
    await deadlocks_reach(pg_database, 5)
    book = await assert_invariants(pg_database.engine)
    assert len(book.transfer_ids) == 0, "a given-up transfer moved money"


async def test_a_serialization_failure_is_retried_and_completes(pg_database: PgDatabase) -> None:
    """Under REPEATABLE READ, a row changed by a transaction that commits while the app waits to
    lock it is a serialization failure (40001) for the app: its attempt runs again."""
    await pg_database.set_default("default_transaction_isolation", "repeatable read")
    async with in_process_app(settings_for(pg_database.url)) as api:
        _, users = await members(api.client, pg_database.engine, 2)
        first, second = sorted(users, key=lambda m: m.id)
        before = retried(), counted("asyncblog_db_errors_total", kind="busy")
        holder = await asyncpg.connect(pg_database.cluster.dsn(pg_database.name))
        try:
            await holder.execute("BEGIN")
            await holder.execute("UPDATE users SET balance = balance + 5 WHERE id = $1", first.id)
            sent = asyncio.create_task(send(api.client, first, second))
            await app_waits_for_a_lock(pg_database)
            await holder.execute("COMMIT")  # the row the app waits for changed under its snapshot
        finally:
            await holder.close()
        response: httpx.Response = await asyncio.wait_for(sent, 30)
        assert response.status_code == 201, response.text
        busy = counted("asyncblog_db_errors_total", kind="busy")
        assert (retried() - before[0], busy - before[1]) == (1, 1)
        balance = await api.client.get("/users/me", headers=first.headers)
        assert balance.json()["balance"] == "104.00"  # the retry saw the committed +5


# ---------------------------------------------------------------------------- MariaDB


@pytest.fixture
async def mariadb_url(tmp_path: Path) -> AsyncIterator[URL]:
    url = await new_database("mariadb", tmp_path)
    try:
        await asyncio.to_thread(migrations.upgrade, url)
        yield url
    finally:
        await drop_database("mariadb", url)


async def innodb_waits(url: URL) -> None:
    """Until a transaction waits for a row lock (the app's transfer, behind the holder)."""
    conn = await aiomysql.connect(
        host=url.host, port=url.port or 3306, user=url.username, db=url.database
    )
    try:
        for _ in range(40):
            async with conn.cursor() as cursor:
                await cursor.execute(
                    "SELECT count(*) FROM information_schema.innodb_trx "
                    "WHERE trx_state = 'LOCK WAIT'"
                )
                (waiting,) = await cursor.fetchone()
            if waiting:
                return
            # MariaDB refreshes innodb_trx only when it was not read for 100 ms
            await asyncio.sleep(0.12)
    finally:
        conn.close()
    raise AssertionError("the transfer never queued on the lock")


@pytest.mark.mariadb
async def test_a_deadlocked_transfer_is_retried_on_mariadb(mariadb_url: URL) -> None:
    """MariaDB (error 1213) aborts the lighter of the two transactions at once: the holder first
    changes rows (undo records weigh), so the app's transfer, which changed none, is the one."""
    engine = create_async_engine(mariadb_url, poolclass=NullPool)
    try:
        async with in_process_app(settings_for(mariadb_url)) as api:
            _, users = await members(api.client, engine, 2)
            first, second = sorted(users, key=lambda m: m.id)
            before = retried(), counted("asyncblog_db_errors_total", kind="busy")
            async with engine.connect() as holder:
                await holder.begin()
                for step in ("+", "-") * 5:  # weight: ten changed rows, net nothing
                    await holder.execute(
                        text(f"UPDATE users SET balance = balance {step} 1 WHERE id = :id"),
                        {"id": second.id},
                    )
                await holder.execute(
                    text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": second.id}
                )
                sent = asyncio.create_task(send(api.client, first, second))
                await innodb_waits(mariadb_url)
                # The cycle: MariaDB aborts the app's attempt, and this lock is granted.
                await holder.execute(
                    text("SELECT id FROM users WHERE id = :id FOR UPDATE"), {"id": first.id}
                )
                await holder.rollback()
            response: httpx.Response = await asyncio.wait_for(sent, 30)
            assert response.status_code == 201, response.text
            busy = counted("asyncblog_db_errors_total", kind="busy")
            assert (retried() - before[0], busy - before[1]) == (1, 1)
        book = await assert_invariants(engine)
        assert len(book.transfer_ids) == 1
    finally:
        await engine.dispose()


async def test_a_serialization_failure_elsewhere_is_one_503_not_retried(
    pg_database: PgDatabase,
) -> None:
    """Only a transfer runs again: another write that meets a serialization failure (a PATCH
    under REPEATABLE READ whose row changed while it waited) is answered 503 with Retry-After
    at once, and its change is not made."""
    await pg_database.set_default("default_transaction_isolation", "repeatable read")
    async with in_process_app(settings_for(pg_database.url)) as api:
        _, (user,) = await members(api.client, pg_database.engine, 1)
        before = retried(), counted("asyncblog_db_errors_total", kind="busy")
        holder = await asyncpg.connect(pg_database.cluster.dsn(pg_database.name))
        try:
            await holder.execute("BEGIN")
            await holder.execute("UPDATE users SET balance = balance + 5 WHERE id = $1", user.id)
            sent = asyncio.create_task(
                api.client.patch(
                    f"/users/{user.id}",
                    json={"username": "renamed_meanwhile"},
                    headers=user.headers,
                )
            )
            await app_waits_for_a_lock(pg_database)
            await holder.execute("COMMIT")
        finally:
            await holder.close()
        response: httpx.Response = await asyncio.wait_for(sent, 30)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.json() == {
            "detail": "The database was too busy to complete the request; retry"
        }
        busy = counted("asyncblog_db_errors_total", kind="busy")
        assert (retried() - before[0], busy - before[1]) == (0, 1)
        shown = await api.client.get(f"/users/{user.id}")
        assert shown.json()["username"] == user.username  # the PATCH changed nothing

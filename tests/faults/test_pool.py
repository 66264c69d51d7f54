"""Pool exhaustion, on SQLite, PostgreSQL and MariaDB (`tests.fixtures.databases.backend`).

POOL_SIZE=2, POOL_MAX_OVERFLOW=0, POOL_TIMEOUT=0.5 and more concurrent requests than that, made
slow for real: another connection holds a lock that every transfer needs (a row lock on
PostgreSQL and MariaDB, the write lock on SQLite), so the two requests that got connections wait
inside the database and keep them. The others must get 503 with Retry-After after the pool
timeout (never a 500, never a hang); once the lock goes, the service answers at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from asyncblog.api.state import AppState
from tests.fixtures.app import empty_tables
from tests.fixtures.databases import Backend, settings_for
from tests.fixtures.faults import (
    assert_invariants,
    ends_within,
    gated_client,
    lock_user,
    members,
    send,
)
from tests.fixtures.metrics import counted
from tests.fixtures.servers import in_process_app

POOL = 2
REQUESTS = 10


async def test_exhausted_pool_is_503_with_retry_after_then_recovers(backend: Backend) -> None:
    settings = settings_for(
        backend.url,
        pool_size=POOL,
        pool_max_overflow=0,
        pool_timeout=0.5,
        statement_timeout_ms=20000,  # the lock waits must outlast the pool timeout
        sqlite_busy_timeout_ms=20000,
    )
    try:
        async with in_process_app(settings) as api:
            _, (a, b) = await members(api.client, backend.engine, 2)
            gate_timeouts = counted("asyncblog_db_gate_timeouts_total")
            async with lock_user(backend.engine, a.id) as holder:
                tasks = [asyncio.create_task(send(api.client, a, b)) for _ in range(REQUESTS)]
                tasks.append(asyncio.create_task(api.client.get("/users")))  # a read, queued
                # All but the POOL requests inside the database must be answered, by the
                # pool timeout, while the lock is still held.
                for _ in range(200):
                    if sum(t.done() for t in tasks) >= len(tasks) - POOL:
                        break
                    await asyncio.sleep(0.05)
                early = [t.result() for t in tasks if t.done()]
                await holder.rollback()
            responses: list[httpx.Response] = await ends_within(
                asyncio.gather(*tasks), "the requests after the lock went", 30
            )

            statuses = Counter(r.status_code for r in responses)
            assert set(statuses) <= {200, 201, 503}, [(r.status_code, r.text) for r in responses]
            assert len(early) >= len(tasks) - POOL, f"requests hung behind the pool: {statuses}"
            busy = [r for r in responses if r.status_code == 503]
            assert len(busy) >= REQUESTS - POOL, statuses
            for r in busy:
                assert r.headers.get("retry-after") == "1", r.headers
                assert isinstance(r.json()["detail"], str)
            # every 503 was a wait for a slot that timed out, counted as such
            assert counted("asyncblog_db_gate_timeouts_total") - gate_timeouts == len(busy)
            assert statuses[201] >= 1, "the requests that held connections completed"

            # Load gone: answered at once, not a 503 left over.
            for _ in range(3):
                moved = await ends_within(send(api.client, a, b), "transfer after the load", 5)
                assert moved.status_code == 201, moved.text
                listed = await ends_within(api.client.get("/users"), "GET /users after", 5)
                assert listed.status_code == 200, listed.text
        book = await assert_invariants(backend.engine)
        assert len(book.transfer_ids) == statuses[201] + 3
    finally:
        await empty_tables(backend.engine)


async def test_authenticated_reads_beyond_the_pool_do_not_starve_each_other(
    backend: Backend,
) -> None:
    """A list or a user read with a token needs two connections (the caller's lookup and the
    read); with every slot held by such requests, none may wait for a second slot (that would
    deadlock until the pool timeout and answer 503)."""
    settings = settings_for(backend.url, pool_size=POOL, pool_max_overflow=POOL, pool_timeout=2.0)
    try:
        async with in_process_app(settings) as api:
            _, (a, b) = await members(api.client, backend.engine, 2)
            reads = [
                api.client.get(path, headers=who.headers)
                for who in (a, b)
                for path in ("/users", f"/users/{a.id}", f"/users/{b.id}")
                for _ in range(3)
            ]
            responses = await ends_within(asyncio.gather(*reads), "authenticated reads", 30)
            statuses = Counter(r.status_code for r in responses)
            assert statuses == {200: len(reads)}, [
                r.text for r in responses if r.status_code != 200
            ]
    finally:
        await empty_tables(backend.engine)


async def test_password_hashing_does_not_hold_a_pool_slot(backend: Backend) -> None:
    """With a pool of one, a login whose Argon2 verification is still running must not keep
    other requests from the database (they would wait and get 503 after POOL_TIMEOUT)."""
    settings = settings_for(backend.url, pool_size=1, pool_max_overflow=1, pool_timeout=0.5)
    state = AppState.build(settings)
    try:
        async with gated_client(state) as (client, hasher):
            hasher.go.set()  # registration and the first logins run freely
            _, (a, _b) = await members(client, backend.engine, 2)
            hasher.go.clear()
            hasher.started.clear()
            form = {"username": a.username, "password": "wrong-pw1"}
            login = await hasher.hold(client.post("/auth/token", data=form))
            count = await ends_within(client.get("/users/count"), "a read during a login", 10)
            assert count.status_code == 200, count.text
            hasher.go.set()
            answer = await ends_within(login, "the login", 10)
            assert answer.status_code == 401, answer.text
    finally:
        await state.db.dispose()
        await empty_tables(backend.engine)


async def test_logging_in_waits_for_no_writer_on_postgresql_and_its_turn_elsewhere(
    backend: Backend,
) -> None:
    """A login checks the password with reads only, then stores the login's first refresh
    token. On PostgreSQL that INSERT needs only a KEY SHARE lock on the user, which a writer of
    the user's balance (FOR NO KEY UPDATE, as transfers lock) does not block: the login
    succeeds while the writer holds on. On SQLite (one writer at a time) and MariaDB (the
    foreign key check waits for the row's lock) it waits its turn and succeeds once the writer
    is done, within the busy / lock wait timeouts."""
    settings = settings_for(backend.url)
    try:
        async with in_process_app(settings) as api:
            _, (a, _b) = await members(api.client, backend.engine, 2)
            async with lock_user(backend.engine, a.id) as holder:
                attempt = asyncio.ensure_future(
                    api.client.post(
                        "/auth/token", data={"username": a.username, "password": "password123"}
                    )
                )
                await asyncio.sleep(0.5)
                if backend.name == "postgresql":
                    assert attempt.done(), "a login waited for a writer of the user's row"
                await holder.rollback()
                login = await ends_within(attempt, "a login after the writer was done", 10)
            assert login.status_code == 200, login.text
    finally:
        await empty_tables(backend.engine)

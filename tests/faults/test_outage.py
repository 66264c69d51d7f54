"""Database outages (PostgreSQL-specific: a throwaway cluster that is stopped for real, and a TCP
proxy in front of it that drops, refuses or blackholes connections).

While the database is down: /readyz answers 503 (bounded by READINESS_TIMEOUT), /healthz stays
200, every other route answers 503 {"detail": "Database unavailable"} with Retry-After: never a
500, never a hang. When it is back, the SAME app instance serves again, without a restart, and no
transfer attempted during the outage was half applied.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from asyncblog.api.state import AppState
from asyncblog.db.statements import Statement
from asyncblog.errors import OutOfRange, Unavailable
from tests.fixtures.app import Api
from tests.fixtures.cluster import PgDatabase, free_port
from tests.fixtures.databases import settings_for
from tests.fixtures.faults import (
    Member,
    assert_created_are_recorded,
    assert_db_unavailable,
    assert_invariants,
    ends_within,
    members,
    send,
)
from tests.fixtures.proxy import FaultProxy
from tests.fixtures.servers import in_process_app

Call = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def every_kind_of_route(admin: dict[str, str], a: Member, b: Member) -> dict[str, Call]:
    """One request per kind of route: reads, writes, authenticated or not, login, money."""
    new = {"username": "newcomer", "email": "newcomer@example.com", "password": "password123"}
    post = {"title": "t", "content": "c"}
    return {
        "GET /users": lambda c: c.get("/users"),
        "GET /users/count": lambda c: c.get("/users/count"),
        "GET /users/{id}": lambda c: c.get(f"/users/{a.id}"),
        "GET /users/me": lambda c: c.get("/users/me", headers=a.headers),
        "GET /posts": lambda c: c.get("/posts"),
        "GET /transfers": lambda c: c.get("/transfers", headers=a.headers),
        "POST /users": lambda c: c.post("/users", json=new),
        "POST /auth/token": lambda c: c.post(
            "/auth/token", data={"username": a.username, "password": "password123"}
        ),
        "POST /posts": lambda c: c.post("/posts", json=post, headers=a.headers),
        "PATCH /users/{id}": lambda c: c.patch(
            f"/users/{a.id}", json={"email": "changed@example.com"}, headers=a.headers
        ),
        "POST /transfers": lambda c: c.post(
            "/transfers", json={"to_user_id": b.id, "amount": "1.00"}, headers=a.headers
        ),
        "POST deposit": lambda c: c.post(
            f"/admin/users/{a.id}/deposit", json={"amount": "5.00"}, headers=admin
        ),
    }


async def assert_down(api: Api, routes: dict[str, Call], on_hang: Callable[[], object]) -> None:
    ready = await ends_within(api.client.get("/readyz"), "/readyz while down", 5, on_hang)
    assert ready.status_code == 503, ready.text
    assert ready.json()["database"] != "ok"
    health = await ends_within(api.client.get("/healthz"), "/healthz while down", 5, on_hang)
    assert health.status_code == 200, "liveness does not depend on the database"
    for name, call in routes.items():
        response = await ends_within(call(api.client), f"{name} while down", on_hang=on_hang)
        assert_db_unavailable(response, f"{name} while the database is down")


async def assert_serves_again(api: Api, a: Member, b: Member) -> None:
    """The very first requests after the database is back succeed: no restart, no 503 left over
    from connections that died in the outage."""
    ready = await ends_within(api.client.get("/readyz"), "/readyz after recovery", 5)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "database": "ok"}
    users = await ends_within(api.client.get("/users"), "GET /users after recovery")
    assert users.status_code == 200, users.text
    me = await ends_within(api.client.get("/users/me", headers=a.headers), "GET /users/me")
    assert me.status_code == 200, me.text
    moved = await ends_within(send(api.client, a, b, "1.00"), "POST /transfers after recovery")
    assert moved.status_code == 201, moved.text


async def test_network_cut_is_503_and_the_same_app_serves_again(
    pg_database: PgDatabase, proxy: FaultProxy
) -> None:
    settings = settings_for(pg_database.url_via(proxy), pool_size=4, pool_max_overflow=2)
    async with in_process_app(settings, proxy) as api:
        admin, (a, b) = await members(api.client, pg_database.engine, 2)
        assert (await api.client.get("/readyz")).status_code == 200

        proxy.cut()  # pooled connections reset, new ones refused
        await assert_down(api, every_kind_of_route(admin, a, b), proxy.cut)
        for _ in range(5):  # transfers attempted during the outage: none may apply
            assert_db_unavailable(await ends_within(send(api.client, a, b), "transfer"))

        await proxy.heal()
        await assert_serves_again(api, a, b)

    book = await assert_invariants(pg_database.engine)
    assert len(book.transfer_ids) == 1, "only the transfer made after recovery moved money"
    assert book.rows[a.id].balance == book.rows[b.id].balance - 2  # 99.00 and 101.00


async def test_blackholed_database_is_503_not_a_hang(
    pg_database: PgDatabase, proxy: FaultProxy
) -> None:
    """Connections accepted but never answered (a dead host behind a firewall): the connect
    timeout (DB_CONNECT_TIMEOUT) and the readiness timeout bound every request."""
    settings = settings_for(pg_database.url_via(proxy), db_connect_timeout=1.0)
    async with in_process_app(settings, proxy) as api:
        admin, (a, b) = await members(api.client, pg_database.engine, 2)
        proxy.cut(blackhole=True)
        routes = every_kind_of_route(admin, a, b)
        subset = {k: routes[k] for k in ("GET /users", "GET /users/me", "POST /transfers")}
        await assert_down(api, subset, proxy.cut)
        await proxy.heal()
        await assert_serves_again(api, a, b)
    await assert_invariants(pg_database.engine)


async def test_cut_in_the_middle_of_transfers_applies_each_fully_or_not_at_all(
    pg_database: PgDatabase, proxy: FaultProxy
) -> None:
    """Cut the network while dozens of transfers are inside their transactions (some in COMMIT):
    each one moved all of its money and wrote its ledger row, or did nothing."""
    rng = random.Random(7)
    settings = settings_for(pg_database.url_via(proxy), pool_size=10, pool_max_overflow=10)
    async with in_process_app(settings, proxy) as api:
        _, users = await members(api.client, pg_database.engine, 6)
        gate = asyncio.Semaphore(24)
        started = 0
        under_way = asyncio.Event()

        async def one() -> httpx.Response:
            nonlocal started
            a, b = rng.sample(users, 2)
            async with gate:
                started += 1
                if started >= 60:
                    under_way.set()
                return await send(api.client, a, b, f"{rng.randint(1, 900) / 100:.2f}")

        tasks = [asyncio.create_task(one()) for _ in range(400)]
        await ends_within(under_way.wait(), "the storm to get under way")
        proxy.cut()
        await asyncio.sleep(0.5)
        await proxy.heal()
        responses = await ends_within(asyncio.gather(*tasks), "the transfers", 60, proxy.cut)
        statuses = Counter(r.status_code for r in responses)
        unexpected = [
            (r.status_code, r.text) for r in responses if r.status_code not in (201, 409, 503)
        ]
        assert not unexpected, f"{statuses}: {unexpected[:5]}"
        assert statuses[503] > 0, f"the cut was not felt: {statuses}"
        assert statuses[201] > 0, statuses
        assert all(
            r.json() == {"detail": "Database unavailable"} and r.headers.get("retry-after") == "1"
            for r in responses
            if r.status_code == 503
        )
        # and the same instance serves at once after the cut
        after = await ends_within(send(api.client, users[0], users[1], "0.01"), "transfer")
        assert after.status_code == 201, after.text

    book = await assert_invariants(pg_database.engine)
    assert_created_are_recorded(responses, book)


async def test_a_server_that_is_shutting_down_is_503_not_500(pg_database: PgDatabase) -> None:
    """While PostgreSQL shuts down (or starts up) it refuses new connections with SQLSTATE 57P03
    "the database system is shutting down". A smart shutdown waits for the open sessions, which
    holds that window open for as long as the test likes: any new connection the app makes
    then meets 57P03, and that is an unreachable database (503), not a bug (500)."""
    cluster = pg_database.cluster
    settings = settings_for(pg_database.url, pool_size=2, pool_max_overflow=0)
    async with in_process_app(settings) as api:
        admin, (a, b) = await members(api.client, pg_database.engine, 2)
        await api.state.db.reconnect()  # no idle connection: every request connects
        holder = await asyncpg.connect(cluster.dsn(pg_database.name))
        stopping = await asyncio.create_subprocess_exec(
            *("pg_ctlcluster", "-m", "smart", cluster.version, cluster.name, "stop"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            for _ in range(100):  # until the server says "shutting down"
                try:
                    probe = await asyncpg.connect(cluster.dsn(pg_database.name), timeout=2)
                except asyncpg.CannotConnectNowError:
                    break
                await probe.close()
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server never entered its shutdown")
            await assert_down(api, every_kind_of_route(admin, a, b), lambda: None)
        finally:
            await holder.close()
            await ends_within(stopping.wait(), "pg_ctlcluster stop", 60)
            await cluster.ensure_running()
        await assert_serves_again(api, a, b)
    book = await assert_invariants(pg_database.engine)
    assert len(book.transfer_ids) == 1


async def test_database_restart_is_503_then_the_same_app_serves_again(
    pg_database: PgDatabase,
) -> None:
    """Stop the PostgreSQL server for real (fast shutdown: every backend is terminated, open
    transactions roll back) while transfers are running, then start it again."""
    cluster = pg_database.cluster
    settings = settings_for(pg_database.url, pool_size=5, pool_max_overflow=5)
    async with in_process_app(settings) as api:
        admin, users = await members(api.client, pg_database.engine, 4)
        a, b = users[:2]
        rng = random.Random(11)
        stop = asyncio.Event()
        responses: list[httpx.Response] = []

        async def traffic() -> None:
            while not stop.is_set():
                x, y = rng.sample(users, 2)
                responses.append(await send(api.client, x, y, f"{rng.randint(1, 500) / 100:.2f}"))
                await asyncio.sleep(0.002)

        workers = [asyncio.create_task(traffic()) for _ in range(8)]
        try:
            await asyncio.sleep(0.3)
            await cluster.stop()
            await assert_down(api, every_kind_of_route(admin, a, b), lambda: None)
            await asyncio.sleep(0.2)
        finally:
            await cluster.ensure_running()
            await asyncio.sleep(0.3)
            stop.set()
            await ends_within(asyncio.gather(*workers), "the traffic", 30)

        await assert_serves_again(api, a, b)
        statuses = Counter(r.status_code for r in responses)
        unexpected = [
            (r.status_code, r.text) for r in responses if r.status_code not in (201, 409, 503)
        ]
        assert not unexpected, f"{statuses}: {unexpected[:5]}"
        assert statuses[503] > 0 and statuses[201] > 0, statuses

    book = await assert_invariants(pg_database.engine)
    assert_created_are_recorded(responses, book)


async def test_terminated_connections_under_the_hot_read_are_never_a_500(
    pg_database: PgDatabase,
) -> None:
    """Backends killed between requests (pg_terminate_backend, a failover) are noticed: the
    next read is served on a new connection or is a 503, never a 500, and the one after is
    served."""
    settings = settings_for(pg_database.url, pool_size=1, pool_max_overflow=0)
    async with in_process_app(settings) as api:
        _, (a, _b) = await members(api.client, pg_database.engine, 2)
        first = await ends_within(api.client.get(f"/users/{a.id}"), "a read", 10)
        assert first.status_code == 200, first.text
        async with pg_database.engine.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'asyncblog' AND datname = current_database()"
                )
            )
        assert killed == 1  # one pool: the data path's connections are the engine's
        during = await ends_within(api.client.get(f"/users/{a.id}"), "the read after", 10)
        assert during.status_code in (200, 503), during.text
        if during.status_code == 503:
            assert during.json() == {"detail": "Database unavailable"}
        after = await ends_within(api.client.get(f"/users/{a.id}"), "the next read", 10)
        assert after.status_code == 200, after.text
        assert after.json()["id"] == a.id


PID = Statement(lambda: text("SELECT pg_backend_pid()"))
SUICIDE = Statement(lambda: text("SELECT pg_terminate_backend(pg_backend_pid())"))
NOT_A_NUMBER = Statement(lambda: text("SELECT CAST(:n AS int)").bindparams(n="x"))


async def test_a_connection_killed_mid_statement_is_unavailable_and_replaced(
    pg_database: PgDatabase,
) -> None:
    """The backend dies while a statement of the data path runs: Unavailable (a 503), the
    connection is not reused, and the next unit of work gets a working one."""
    settings = settings_for(pg_database.url, pool_size=1, pool_max_overflow=0)
    db = AppState.build(settings).db
    try:
        async with db.reader() as link:
            victim = await link.value(PID)
        with pytest.raises(Unavailable):
            async with db.reader() as link:
                await link.value(SUICIDE)
        async with db.reader() as link:
            assert await link.value(PID) != victim
    finally:
        await db.dispose()


async def test_a_bad_statement_on_the_data_path_is_not_a_503(
    pg_database: PgDatabase,
) -> None:
    """An error that is the statement's, not the server's, is no outage: it is translated
    for what it is (22P02, a value the column cannot take: 422), and the connection stays in
    the pool for the next unit of work."""
    settings = settings_for(pg_database.url, pool_size=1, pool_max_overflow=0)
    db = AppState.build(settings).db
    try:
        async with db.reader() as link:
            before = await link.value(PID)
        with pytest.raises(OutOfRange):
            async with db.reader() as link:
                await link.value(NOT_A_NUMBER)
        async with db.reader() as link:
            assert await link.value(PID) == before
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_an_unreachable_server_on_the_data_path_is_a_logged_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unavailable, with the driver's error as its cause; the API answers 503 and logs it."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    settings = settings_for(url, db_connect_timeout=1)
    db = AppState.build(settings).db
    try:
        with pytest.raises(Unavailable) as raised:
            async with db.reader():
                pass
        assert raised.value.__cause__ is not None
    finally:
        await db.dispose()
    caplog.set_level(logging.WARNING, logger="asyncblog.error")
    async with in_process_app(settings) as api:
        response = await api.client.get("/users/1")
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "Database unavailable"}
    assert any(r.name == "asyncblog.error" and r.levelno == logging.WARNING for r in caplog.records)

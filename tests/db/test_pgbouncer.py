"""Behind a real PgBouncer in transaction mode (`tests.fixtures.pgbouncer`), with PGBOUNCER=true:
every kind of route works, concurrent units of work share out few server connections without
clashing prepared statements or leaking session state, and the statement timeout still applies.
Without the setting the service cannot even connect: PgBouncer refuses `statement_timeout` as a
startup parameter.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from tests.fixtures.cluster import PgDatabase
from tests.fixtures.databases import settings_for
from tests.fixtures.faults import (
    assert_db_unavailable,
    assert_invariants,
    bounded,
    members,
    send,
    transfer_call,
    unexpected,
)
from tests.fixtures.pgbouncer import SERVER_CONNECTIONS, Bouncer
from tests.fixtures.servers import in_process_app


async def test_without_the_setting_pgbouncer_refuses_the_connection(pgbouncer: Bouncer) -> None:
    async with in_process_app(settings_for(pgbouncer.url)) as api:
        response = await api.client.get("/readyz")
    assert response.status_code == 503
    assert "unsupported startup parameter: statement_timeout" in pgbouncer.output()


# What PgBouncer itself sends to its server connections when it hands one to another client:
# SET of the startup parameters it tracks per client, as that client gave them (asyncpg also
# gives client_encoding).
TRACKED = {"application_name", "timezone", "client_encoding"}
_LOGGED = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)$")
_SET = re.compile(r"^SET\s+(?:SESSION\s+)?(\w+)", re.IGNORECASE)


def session_settings(database: PgDatabase) -> set[str]:
    """What the statements logged in this database (`log_statement = all`) set for the session,
    beyond PgBouncer's own syncing of the tracked startup parameters. Fails unless the app's
    statements were logged at all (else an empty answer would prove nothing)."""
    lines = [
        line
        for line in database.cluster.log_file.read_text(errors="replace").splitlines()
        if f"@{database.name} " in line
    ]
    statements = [m.group(1) for line in lines if (m := _LOGGED.search(line))]
    assert any("INSERT INTO users" in s for s in statements), (
        f"the app's statements were not logged: {lines[-20:]}"
    )
    found = set()
    for statement in statements:
        for command in statement.split(";"):
            setting = _SET.match(command.strip())
            if setting and setting.group(1).lower() not in TRACKED:
                found.add(command.strip())
    return found


@pytest.fixture
async def statements_logged(pg_database: PgDatabase) -> PgDatabase:
    """The test's database with `log_statement = all` for every later connection: requested
    before `pgbouncer`, so that its server connections, opened after, log every statement."""
    await pg_database.set_default("log_statement", "all")
    return pg_database


async def test_every_kind_of_route_works_behind_pgbouncer(
    statements_logged: PgDatabase, pgbouncer: Bouncer
) -> None:
    """Every kind of route answers behind PgBouncer in transaction mode, and the app sets
    nothing for the session: of the statements the server logged (`log_statement = all`), no
    SET but PgBouncer's own of the startup parameters it tracks (PgBouncer would refuse any
    other startup parameter: `test_without_the_setting_pgbouncer_refuses_the_connection`)."""
    settings = settings_for(pgbouncer.url, pgbouncer=True, pool_size=8, pool_max_overflow=2)
    async with in_process_app(settings) as api:
        assert (await api.client.get("/readyz")).status_code == 200
        admin, (a, b) = await members(api.client, pgbouncer.database.engine, 2)
        client = api.client
        # reads and writes of the data path
        post = await client.post("/posts", json={"title": "t", "content": "c"}, headers=a.headers)
        assert post.status_code == 201, post.text
        assert (await client.get(f"/posts/{post.json()['id']}")).status_code == 200
        assert (await client.get(f"/users/{a.id}")).status_code == 200
        assert (await client.get("/users", params={"limit": 10})).status_code == 200
        me = await client.get("/users/me", headers=a.headers)
        patched = await client.patch(
            f"/users/{a.id}",
            json={"username": f"{a.username}_x"},
            headers={**a.headers, "If-Match": me.headers["etag"]},
        )
        assert patched.status_code == 200, patched.text
        # money, with a replay
        pay = {"to_user_id": b.id, "amount": "2.00"}
        keyed = {**a.headers, "Idempotency-Key": "bouncer-1"}
        first = await client.post("/transfers", json=pay, headers=keyed)
        again = await client.post("/transfers", json=pay, headers=keyed)
        assert (first.status_code, again.status_code) == (201, 201), again.text
        assert again.headers["idempotent-replayed"] == "true"
        # the ORM path: the admin's bulk operations
        users = [{"username": "bulk_b1", "email": "b1@example.com", "password": "password123"}]
        created = await client.post("/users/bulk", json={"users": users}, headers=admin)
        assert created.status_code == 201, created.text
        ids = [u["id"] for u in created.json()["created"]]
        body = {"ids": ids, "values": {"is_active": False}}
        assert (await client.patch("/users/bulk", json=body, headers=admin)).status_code == 200
        deleted = await client.request("DELETE", "/users/bulk", json={"ids": ids}, headers=admin)
        assert deleted.status_code == 200, deleted.text
        # sessions: refresh and logout
        form = {"username": b.username, "password": "password123"}
        login = (await client.post("/auth/token", data=form)).json()
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": login["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
    book = await assert_invariants(pgbouncer.database.engine)
    assert len(book.transfer_ids) == 1
    assert session_settings(statements_logged) == set()


async def test_concurrent_units_of_work_share_few_server_connections(pgbouncer: Bouncer) -> None:
    """More client connections than PgBouncer has server connections: consecutive statements
    of one client connection run on different server connections. No prepared statement of one
    is looked for on another, on the data path (transfers and reads) nor on the ORM's (bulk
    imports, sent among them), and the money adds up."""
    # the overflow serves the ORM's bulk imports (README: POOL_SIZE)
    settings = settings_for(pgbouncer.url, pgbouncer=True, pool_size=10, pool_max_overflow=6)
    assert settings.pool_size > SERVER_CONNECTIONS
    async with in_process_app(settings) as api:
        admin, users = await members(api.client, pgbouncer.database.engine, 4, "100.00")
        calls = [
            transfer_call(api, users[i % 4], users[(i + 1) % 4], Decimal("1.00"))
            for i in range(120)
        ]
        reads = [(lambda u=u: api.client.get(f"/users/{u.id}")) for u in users * 30]

        def bulk_import(n: int) -> Callable[[], Awaitable[httpx.Response]]:
            names = [f"bulk{n}_{k}" for k in range(3)]
            body = {
                "users": [
                    {"username": name, "email": f"{name}@example.com", "password": "password123"}
                    for name in names
                ]
            }
            return lambda: api.client.post("/users/bulk", json=body, headers=admin)

        imports = [bulk_import(n) for n in range(12)]
        mixed = [
            call for trio in zip(calls[:12], reads[:12], imports, strict=True) for call in trio
        ]
        responses = await bounded([*mixed, *calls[12:], *reads[12:]], at_once=40)
        assert unexpected(responses, {200, 201}) == []
    book = await assert_invariants(pgbouncer.database.engine)
    assert len(book.transfer_ids) == 120
    async with pgbouncer.database.engine.connect() as conn:
        registered = await conn.scalar(text("SELECT count(*) FROM users"))
    assert registered == 1 + len(users) + 12 * 3  # the admin, the members, the imports
    assert "prepared statement" not in pgbouncer.output()


async def test_the_statement_timeout_still_applies_behind_pgbouncer(pgbouncer: Bouncer) -> None:
    """PgBouncer refuses it at connect time, so the bound is the client's: the statement is
    cancelled after STATEMENT_TIMEOUT_MS (through PgBouncer's cancel), answered 503, and the
    service serves on."""
    timeout_ms = 500
    settings = settings_for(pgbouncer.url, pgbouncer=True, statement_timeout_ms=timeout_ms)
    async with in_process_app(settings) as api:
        _, (a, b) = await members(api.client, pgbouncer.database.engine, 2)
        holder = await asyncpg.connect(pgbouncer.database.cluster.dsn(pgbouncer.database.name))
        try:
            await holder.execute("BEGIN")
            await holder.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", a.id)
            started = time.monotonic()
            response = await send(api.client, a, b)
            took = time.monotonic() - started
        finally:
            await holder.close()
        assert_db_unavailable(response, "a transfer behind a lock")
        # the setting, plus 1.5 s of slack for a loaded machine
        assert timeout_ms / 1000 <= took < timeout_ms / 1000 + 1.5, took
        again = await asyncio.wait_for(send(api.client, a, b), 10)
        assert again.status_code == 201, again.text

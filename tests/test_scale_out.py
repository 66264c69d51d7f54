"""The bank run over the whole topology, for real: `asyncblog serve --workers 4` behind PgBouncer
in transaction mode (3 server connections), reads going to a streaming replica that lags 1.5 s.

Many concurrent transfers among a few funded users, with each payer's balance read after its
transfers (read-your-writes through the cookie), while the ledger invariants are sampled on the
primary again and again: every invariant holds at every sample and at the end, every 201 is in
the ledger, no answer is a 5xx.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest
import typer

from asyncblog.cli import _check_connection_budget
from tests.fixtures.cluster import Cluster, PgDatabase
from tests.fixtures.databases import settings_for
from tests.fixtures.faults import assert_created_are_recorded, assert_invariants, members
from tests.fixtures.ledger import ledger_mismatches, ledger_rows
from tests.fixtures.metrics import counted_by_pid
from tests.fixtures.pgbouncer import Bouncer
from tests.fixtures.replica import Replica
from tests.fixtures.servers import serving


def version(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.headers["etag"].strip('"'))


USERS = 6
TRANSFERS = 150
AT_ONCE = 24


async def test_the_bank_run_over_workers_pgbouncer_and_a_replica(
    pgbouncer: Bouncer, pg_replica: Replica, tmp_path: Path
) -> None:
    settings = {
        "WEB_CONCURRENCY": "4",
        "PGBOUNCER": "true",
        "DATABASE_REPLICA_URLS": pg_replica.url.render_as_string(hide_password=False),
        "POOL_SIZE": "4",
        "POOL_MAX_OVERFLOW": "2",
    }
    database = pgbouncer.database
    async with serving(pgbouncer.url, tmp_path, **settings) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
            _, users = await members(client, database.engine, USERS, "100.00")
            setup = client.cookies["asyncblog_lsn"]  # where the setup's writes are
        rng = random.Random(20261126)
        statuses: Counter[int] = Counter()
        created: list[httpx.Response] = []
        stale_reads = 0
        samples = 0
        done = asyncio.Event()

        async def sample_invariants() -> None:
            nonlocal samples
            while not done.is_set():
                async with database.engine.connect() as conn:
                    assert ledger_mismatches(await ledger_rows(conn)) == {}, samples
                samples += 1
                await asyncio.sleep(0.02)

        gate = asyncio.Semaphore(AT_ONCE)

        async def pay(n: int) -> None:
            nonlocal stale_reads
            payer, payee = rng.sample(users, 2)
            amount = f"{rng.randint(1, 500) / 100:.2f}"
            async with (
                gate,
                httpx.AsyncClient(
                    base_url=server.base, timeout=60, cookies={"asyncblog_lsn": setup}
                ) as own,
            ):
                before = await own.get("/users/me", headers=payer.headers)
                response = await own.post(
                    "/transfers",
                    json={"to_user_id": payee.id, "amount": amount},
                    headers=payer.headers,
                )
                statuses[response.status_code] += 1
                if response.status_code == 201:
                    created.append(response)
                    wrote = response.headers["x-consistent-after"]
                    after = await own.get(
                        "/users/me", headers={**payer.headers, "X-Consistent-After": wrote}
                    )
                    statuses[after.status_code] += 1
                    # its own transfer is visible: the row's version moved past the one read
                    # before it (every change of the row moves the version: ETag)
                    if version(after) <= version(before):
                        stale_reads += 1

        sampler = asyncio.create_task(sample_invariants())
        try:
            await asyncio.gather(*(pay(n) for n in range(TRANSFERS)))
        finally:
            done.set()
            await sampler
        assert not [s for s in statuses if s >= 500], statuses
        assert set(statuses) <= {200, 201, 409}, statuses  # 409: not enough money left
        assert stale_reads == 0
        assert samples > 10, "the invariants were not sampled during the run"
        assert "unhandled error" not in server.output()
    book = await assert_invariants(database.engine)
    assert_created_are_recorded(created, book)
    assert len(book.transfer_ids) == len(created)
    assert sum(row.balance for row in book.rows.values()) == Decimal(USERS * 100)


async def test_login_limits_hold_across_workers_without_redis(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    """`serve --workers 2` with no REDIS_URL keeps the login counts in the database: wrong
    passwords for one user, sent in small bursts on new connections until each of both workers
    has answered more than LOGIN_MAX_FAILURES (5) of them (seen in their metrics files; uvicorn
    tends to hand a whole burst to one), are checked exactly 5 times in all and refused after.
    With counts per process, each worker would check 5: 10 in all."""
    directory = tmp_path / "prometheus"
    settings = {
        "WEB_CONCURRENCY": "2",
        "METRICS": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "LOGIN_MAX_FAILURES": "5",
    }
    async with serving(pg_database.url, tmp_path, **settings) as server:
        body = {"username": "spread", "email": "spread@example.com", "password": "password123"}
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            assert (await client.post("/users", json=body)).status_code == 201
        before = logins_by_pid(directory)
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection each: any worker
        form = {"username": "spread", "password": "wrong-password"}
        statuses: Counter[int] = Counter()
        async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits) as c:
            for _burst in range(40):
                answers = await asyncio.gather(*(c.post("/auth/token", data=form) for _ in "abcd"))
                statuses.update(a.status_code for a in answers)
                after = logins_by_pid(directory)
                answered = [n - before.get(pid, 0) for pid, n in after.items()]
                if len(answered) >= 2 and sorted(answered)[-2] > 5:  # serve has a file too
                    break
            else:
                raise AssertionError(f"one worker answered nearly every attempt: {after}")
    assert statuses[401] == 5, statuses
    assert set(statuses) == {401, 429}, statuses


def logins_by_pid(directory: Path) -> dict[int, float]:
    """Password logins (any outcome) counted in each worker's metrics file."""
    return counted_by_pid(directory, "asyncblog_logins_total")


async def connection_numbers(cluster: Cluster) -> tuple[int, int]:
    """The server's max_connections and superuser_reserved_connections."""
    conn = await asyncpg.connect(cluster.dsn(), timeout=10)
    try:
        total = int(await conn.fetchval("SHOW max_connections"))
        reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
    finally:
        await conn.close()
    return total, reserved


def test_on_postgresql_the_limit_is_max_connections_less_the_reserved(
    pg_cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve`'s check on the throwaway cluster (max_connections 300, 3 reserved for
    superusers): 2 workers x (POOL_SIZE + POOL_MAX_OVERFLOW) above 297 but not above 300 are
    refused, exit 2, in one line naming both numbers; a total of exactly 297 starts, with
    nothing said. Counting max_connections alone would let the first start. (The check is
    `serve`'s own function, called as `serve` calls it, before any worker starts.)"""
    total, reserved = asyncio.run(connection_numbers(pg_cluster))
    allowed = total - reserved
    workers = 2
    per_worker = allowed // workers + 1
    assert allowed < workers * per_worker <= total, (total, reserved)

    over = settings_for(pg_cluster.url(), pool_size=per_worker - 10, pool_max_overflow=10)
    with pytest.raises(typer.Exit) as refused:
        _check_connection_budget(over, workers)
    assert refused.value.exit_code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"{workers} workers x {per_worker} connections" in lines[0]
    assert f"= {workers * per_worker}," in lines[0]
    assert f"({allowed}: max_connections {total} - {reserved} reserved)" in lines[0]

    at_the_limit = settings_for(pg_cluster.url(), pool_size=allowed - 10, pool_max_overflow=10)
    _check_connection_budget(at_the_limit, 1)  # no exit
    assert capsys.readouterr().err == ""

"""Readiness and the way to the database under faults: the README's Operations rows "503 at
once", "/readyz 503 within READINESS_TIMEOUT", "a flood of probes opens no connection" and
"connections idle for POOL_PING_AFTER_IDLE are pinged before use".

PostgreSQL runs on the throwaway cluster behind the fault proxy (`tests.fixtures.proxy`); MariaDB
behind the same proxy in front of its server; SQLite where the fault exists there (a file that
cannot be opened). Nothing is mocked: refusals, black holes, stalls and dead connections are real
sockets and real server backends.

Timings are asserted only against a documented timeout, set small in the test: at least the
setting (minus `EARLY`), at most the setting plus a stated slack. "At once" (a refused
connection involves no timeout) is bounded by `AT_ONCE`, far below every timeout the test sets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, QueuePool

from asyncblog import migrations
from asyncblog.config import Settings
from asyncblog.db.database import Database
from tests.fixtures.app import Api
from tests.fixtures.cluster import APP_NAME, Cluster, PgDatabase
from tests.fixtures.databases import Backend, drop_database, new_database, settings_for
from tests.fixtures.faults import (
    HANG,
    Member,
    assert_db_unavailable,
    ends_within,
    members,
    send,
)
from tests.fixtures.proxy import FaultProxy
from tests.fixtures.servers import in_process_app

# Slacks, for a loaded 2-core machine running the app, the proxy and the database at once.
AT_ONCE = 1.0  # s: a refused connection waits for no timer (every timeout here is >= 10 s)
SLACK = 1.5  # s above DB_CONNECT_TIMEOUT: the answer after the connect timer fired
READY = 0.3  # s: READINESS_TIMEOUT in the readiness tests
READY_SLACK = 0.7  # s above it: "/readyz answers within 1 s" with READINESS_TIMEOUT=0.3
EARLY = 0.02  # s: a timer measured from outside may seem to fire this much early
LONG = 10.0  # s: DB_CONNECT_TIMEOUT / READINESS_TIMEOUT where the test says "not this timeout"

Call = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


# ---------------------------------------------------------------------------- databases


@dataclass
class Behind:
    """A migrated database that the app reaches through a fault proxy."""

    backend: str
    url: URL  # through the proxy: the app's
    engine: AsyncEngine  # direct, no pool: the test's own statements
    proxy: FaultProxy


@dataclass
class MariaDb:
    """A migrated MariaDB database of the test's own."""

    url: URL
    engine: AsyncEngine  # direct, no pool


@pytest.fixture
async def mariadb(tmp_path: Path) -> AsyncIterator[MariaDb]:
    """A fresh, migrated MariaDB database (skipped, or failed under CI, if the server is not
    reachable: `tests.fixtures.databases.unavailable`)."""
    url = await new_database("mariadb", tmp_path)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        await asyncio.to_thread(migrations.upgrade, url)
        yield MariaDb(url, engine)
    finally:
        await engine.dispose()
        await drop_database("mariadb", url)


@pytest.fixture
def pg_behind(pg_database: PgDatabase, proxy: FaultProxy) -> Behind:
    """The test's database in the throwaway cluster, behind `tests.fixtures.proxy`."""
    return Behind("postgresql", pg_database.url_via(proxy), pg_database.engine, proxy)


@pytest.fixture
async def mariadb_behind(mariadb: MariaDb) -> AsyncIterator[Behind]:
    """The same proxy in front of the MariaDB server."""
    async with FaultProxy(mariadb.url.port or 3306) as proxy:
        yield Behind("mariadb", mariadb.url.set(port=proxy.port), mariadb.engine, proxy)


BEHIND = [
    pytest.param("pg_behind", marks=pytest.mark.postgres, id="postgresql"),
    pytest.param("mariadb_behind", marks=pytest.mark.mariadb, id="mariadb"),
]


@pytest.fixture(params=BEHIND)
def behind(request: pytest.FixtureRequest) -> Behind:
    """The same test on PostgreSQL (the throwaway cluster) and MariaDB, each behind the proxy."""
    found: Behind = request.getfixturevalue(request.param)
    return found


# ---------------------------------------------------------------------------- helpers


def routes(admin: dict[str, str], a: Member, b: Member) -> dict[str, Call]:
    """One request per kind of route (an anonymous read, an authenticated read, a login, a
    write, a transfer, an admin's deposit) and the readiness probe."""
    return {
        "GET /users/{id}": lambda c: c.get(f"/users/{a.id}"),
        "GET /users/me": lambda c: c.get("/users/me", headers=a.headers),
        "POST /auth/token": lambda c: c.post(
            "/auth/token", data={"username": a.username, "password": "password123"}
        ),
        "POST /posts": lambda c: c.post(
            "/posts", json={"title": "t", "content": "c"}, headers=a.headers
        ),
        "POST /transfers": lambda c: send(c, a, b),
        "POST deposit": lambda c: c.post(
            f"/admin/users/{a.id}/deposit", json={"amount": "5.00"}, headers=admin
        ),
        "GET /readyz": lambda c: c.get("/readyz"),
    }


def assert_unavailable(name: str, response: httpx.Response) -> None:
    """/readyz's 503, or the contract's 503 for every other route."""
    if name == "GET /readyz":
        assert response.status_code == 503, f"{name}: {response.status_code} {response.text}"
        assert response.json() == {"status": "unavailable", "database": "unreachable"}
    else:
        assert_db_unavailable(response, name)


async def timed(
    request: Awaitable[httpx.Response],
    what: str,
    on_hang: Callable[[], object],
    bound: float = HANG,
) -> tuple[httpx.Response, float]:
    """The response and the seconds it took (a test failure if it took over `bound`)."""
    start = time.monotonic()
    response = await ends_within(request, what, bound, on_hang)
    return response, time.monotonic() - start


async def until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 10) -> None:
    """Poll `condition` (every 20 ms) until it holds; a test failure after `seconds`."""
    deadline = time.monotonic() + seconds
    for _ in range(100_000):
        if await condition():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    pytest.fail(f"{what}: not within {seconds:.0f}s", pytrace=False)


async def pg_app_pids(pg: PgDatabase) -> set[int]:
    return {int(c["pid"]) for c in await pg.app_connections()}


async def terminate_pg_app_backends(pg: PgDatabase) -> set[int]:
    """pg_terminate_backend on every connection of the app (its application_name) to this
    database; returns their pids once pg_stat_activity no longer lists them."""
    async with pg.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :app AND datname = current_database()"
            ),
            {"app": APP_NAME},
        )
        killed = {int(pid) for pid, ok in rows if ok}

    async def gone() -> bool:
        return not killed & await pg_app_pids(pg)

    await until(gone, "the terminated backends to leave pg_stat_activity")
    return killed


async def mariadb_others(engine: AsyncEngine, database: str) -> set[int]:
    """The ids of the connections to `database` other than the asking one (the app's)."""
    async with engine.connect() as conn:
        ids = await conn.scalars(
            text(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = :db AND id <> CONNECTION_ID()"
            ),
            {"db": database},
        )
        return {int(i) for i in ids}


async def kill_mariadb_app_connections(engine: AsyncEngine, database: str) -> set[int]:
    """KILL every connection to `database` but the asking one; returns their ids once the
    processlist no longer shows them. The test's own engine has no pool: the others are the
    app's."""
    killed = await mariadb_others(engine, database)
    async with engine.connect() as conn:
        for thread in killed:
            await conn.execute(text(f"KILL CONNECTION {thread}"))

    async def gone() -> bool:
        return not killed & await mariadb_others(engine, database)

    await until(gone, "the killed connections to leave the processlist")
    return killed


# ---------------------------------------------------------------------------- 503 at once


async def test_a_refused_connection_is_503_at_once(behind: Behind) -> None:
    """Proxy refusing (the pooled connections reset, new ones refused, as when the server is
    stopped): every kind of route and /readyz answer 503 in under `AT_ONCE`, while
    DB_CONNECT_TIMEOUT and READINESS_TIMEOUT are 10 s. A refusal needs no timer: an answer that
    waited for one would take 10 s, one that retried the connection with a pause would show."""
    settings = settings_for(
        behind.url,
        pool_size=2,
        pool_max_overflow=0,
        db_connect_timeout=LONG,
        readiness_timeout=LONG,
    )
    async with in_process_app(settings, behind.proxy) as api:
        admin, (a, b) = await members(api.client, behind.engine, 2)
        assert (await api.client.get(f"/users/{a.id}")).status_code == 200  # a pooled connection

        behind.proxy.cut()
        for name, call in routes(admin, a, b).items():
            response, took = await timed(call(api.client), name, behind.proxy.cut)
            assert_unavailable(name, response)
            assert took < AT_ONCE, f"{name}: answered after {took:.2f}s, not at once"


@pytest.mark.sqlite
async def test_an_sqlite_file_that_cannot_be_opened_is_503_at_once(tmp_path: Path) -> None:
    """SQLite's "unreachable": a file in a directory that does not exist. The same routes as
    the servers' (those that need no user) answer 503 at once; /healthz stays 200."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'nowhere.db'}"
    register = {"username": "nobody", "email": "nobody@example.com", "password": "password123"}
    calls: dict[str, Call] = {
        "GET /readyz": lambda c: c.get("/readyz"),
        "GET /users/{id}": lambda c: c.get("/users/1"),
        "GET /users": lambda c: c.get("/users"),
        "GET /posts": lambda c: c.get("/posts"),
        "POST /users": lambda c: c.post("/users", json=register),
        "POST /auth/token": lambda c: c.post(
            "/auth/token", data={"username": "nobody", "password": "password123"}
        ),
    }
    settings = settings_for(url, readiness_timeout=LONG, sqlite_busy_timeout_ms=10_000)
    async with in_process_app(settings) as api:
        for name, call in calls.items():
            response, took = await timed(call(api.client), name, lambda: None)
            assert_unavailable(name, response)
            assert took < AT_ONCE, f"{name}: answered after {took:.2f}s, not at once"
        assert (await api.client.get("/healthz")).status_code == 200


async def test_a_black_hole_is_503_after_db_connect_timeout(behind: Behind) -> None:
    """Connections accepted and never answered (a dead host behind a firewall): each request
    connects into the hole and is answered 503 after DB_CONNECT_TIMEOUT, at least the setting
    (the timer's bound, not luck) and at most the setting + `SLACK`. READINESS_TIMEOUT is 10 s,
    so /readyz too is bounded by the connect timeout. (aiomysql bounds only the TCP connect, in
    whole seconds, and reads the greeting with no timeout: the engine bounds its connect as a
    whole, `db.engine._mysql_connect`.)"""
    connect = 0.5
    settings = settings_for(
        behind.url,
        pool_size=2,
        pool_max_overflow=0,
        db_connect_timeout=connect,
        readiness_timeout=LONG,
    )
    async with in_process_app(settings, behind.proxy) as api:
        admin, (a, b) = await members(api.client, behind.engine, 2)
        await api.state.db.reconnect()  # no idle connection: every request below connects
        behind.proxy.cut(blackhole=True)
        for name, call in routes(admin, a, b).items():
            response, took = await timed(
                call(api.client), name, behind.proxy.cut, bound=connect + SLACK + 2
            )
            assert_unavailable(name, response)
            assert connect - EARLY <= took < connect + SLACK, (
                f"{name}: answered after {took:.2f}s; DB_CONNECT_TIMEOUT is {connect}s"
            )


# ---------------------------------------------------------------------------- /readyz


@pytest.mark.parametrize("probe", ["held", "connecting"])
async def test_readyz_is_503_within_the_readiness_timeout_on_a_stalled_database(
    behind: Behind, probe: str
) -> None:
    """The network stops carrying bytes (a frozen server). `held`: the probe's SELECT 1 goes
    out on the connection the data path kept from the probe before; `connecting`: no connection
    is left (`Database.reconnect`), so each probe connects into the stall. Either way /readyz
    waits for READINESS_TIMEOUT (0.3 s) and no longer (DB_CONNECT_TIMEOUT is 10 s): 503 in
    [0.3 - EARLY, 0.3 + 0.7) s, for three probes in a row. Ready again once the network is."""
    settings = settings_for(
        behind.url,
        pool_size=2,
        pool_max_overflow=0,
        readiness_timeout=READY,
        db_connect_timeout=LONG,
    )
    async with in_process_app(settings, behind.proxy) as api:
        ready = await ends_within(api.client.get("/readyz"), "/readyz")
        assert ready.status_code == 200, ready.text  # its connection is held for the next unit
        if probe == "connecting":
            await api.state.db.reconnect()

        behind.proxy.stall()
        for attempt in range(3):
            what = f"/readyz {probe}, probe {attempt}"
            response, took = await timed(api.client.get("/readyz"), what, behind.proxy.cut)
            assert_unavailable("GET /readyz", response)
            assert READY - EARLY <= took < READY + READY_SLACK, (
                f"{what}: answered after {took:.2f}s; READINESS_TIMEOUT is {READY}s"
            )

        await behind.proxy.heal()
        ready = await ends_within(api.client.get("/readyz"), "/readyz after the stall")
        assert ready.status_code == 200, ready.text


# ---------------------------------------------------------------------------- a flood of probes


@dataclass
class PoolWatch:
    """What the app's pool did, counted from SQLAlchemy's pool events (exact, not sampled):
    connections opened, and the most checked out at once (the data path's held connections
    count as checked out)."""

    pool: QueuePool
    opened: int = 0
    most_out: int = 0

    def connected(self, *_: Any) -> None:
        self.opened += 1
        self.most_out = max(self.most_out, self.pool.checkedout())

    def checked_out(self, *_: Any) -> None:
        self.most_out = max(self.most_out, self.pool.checkedout())

    def __enter__(self) -> PoolWatch:
        event.listen(self.pool, "connect", self.connected)
        event.listen(self.pool, "checkout", self.checked_out)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.pool, "connect", self.connected)
        event.remove(self.pool, "checkout", self.checked_out)


def pool_of(db: Database) -> QueuePool:
    pool = db.engine.sync_engine.pool
    assert isinstance(pool, QueuePool), type(pool)
    return pool


FLOOD = 200  # /readyz probes at once
ALONGSIDE = 40  # data-path reads among them
FLOOD_SETTINGS: dict[str, Any] = {
    "pool_size": 2,
    "pool_max_overflow": 10,  # room the probes must not use
    # The wait in the gate counts against READINESS_TIMEOUT: 240 units queued on 2 slots would
    # make the last probes 503 on a loaded machine. The claim here is the connection count.
    "readiness_timeout": 30,
    "pool_timeout": 30,
}


async def flood(api: Api, on_sample: Callable[[], Awaitable[None]]) -> list[httpx.Response]:
    """`FLOOD` probes and `ALONGSIDE` reads at once, `on_sample` run over and over meanwhile."""
    calls = [api.client.get("/readyz") for _ in range(FLOOD)]
    for i in range(ALONGSIDE):
        calls.insert(i * (FLOOD // ALONGSIDE), api.client.get("/users/count"))
    done = asyncio.Event()

    async def sampling() -> None:
        while not done.is_set():
            await on_sample()

    sampler = asyncio.create_task(sampling())
    try:
        return await ends_within(asyncio.gather(*calls), "the flood of probes", 60)
    finally:
        done.set()
        await sampler


def assert_all_answered(responses: list[httpx.Response]) -> None:
    wrong = [(r.request.url.path, r.status_code, r.text) for r in responses if r.status_code != 200]
    assert not wrong, f"{len(wrong)} of {len(responses)} not 200: {wrong[:3]}"


async def test_a_flood_of_probes_opens_no_connection_beyond_the_pool(
    pg_database: PgDatabase,
) -> None:
    """POOL_SIZE=2 with POOL_MAX_OVERFLOW=10 free: 200 /readyz (and 40 reads) at once are all
    answered 200 through the gate's 2 slots. The server never sees more than 2 connections of
    the app (pg_stat_activity, sampled during the flood and after), the pool never opens or
    lends more than 2 (its events), and the probes did queue in the gate (the flood was at
    once). A probe that took its own connection would open up to 12."""
    settings = settings_for(pg_database.url, **FLOOD_SETTINGS)
    async with in_process_app(settings) as api:
        db = api.state.db
        with PoolWatch(pool_of(db)) as watch:
            seen: list[int] = []
            queued: list[int] = []

            async def sample() -> None:
                queued.append(db.admission.usage()[2])
                seen.append(len(await pg_database.app_connections()))

            responses = await flood(api, sample)

        assert_all_answered(responses)
        assert seen and max(seen) <= 2, f"the app's connections, sampled during: {seen}"
        after = await pg_database.app_connections()
        assert len(after) <= 2, after
        assert watch.opened <= 2 and watch.most_out <= 2, watch
        assert any(queued), "no unit of work ever waited in the gate: no flood happened"


async def test_a_flood_of_probes_takes_at_most_the_pools_connections_on_every_backend(
    backend: Backend,
) -> None:
    """The same flood on SQLite, PostgreSQL and MariaDB, seen from the app's pool (its events,
    exact): at most POOL_SIZE connections opened and lent (on SQLite the probes are readers:
    the writers' extra connection is not theirs), every probe 200."""
    settings = settings_for(backend.url, **FLOOD_SETTINGS)
    async with in_process_app(settings) as api:
        db = api.state.db
        with PoolWatch(pool_of(db)) as watch:
            queued: list[int] = []

            async def sample() -> None:
                queued.append(db.admission.usage()[2])
                await asyncio.sleep(0)

            responses = await flood(api, sample)

        assert_all_answered(responses)
        assert watch.opened <= 2 and watch.most_out <= 2, watch
        assert any(queued), "no unit of work ever waited in the gate: no flood happened"


# ---------------------------------------------------------------------------- idle connections


class SilentProxy(FaultProxy):
    """The fault proxy with one fault more, `silence()`: the connections open now carry nothing
    any more, either way, and are never closed towards the app, whatever the server does (a
    firewall or NAT that forgot them: the server's end may close, the app is not told). New
    connections are forwarded as usual. (It overrides the proxy's byte pump.)"""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._silenced: set[asyncio.BaseTransport] = set()

    def silence(self) -> None:
        self._silenced |= self._transports

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if sink.transport in self._silenced:
                    continue  # lost on the way
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            if sink.transport not in self._silenced:
                sink.transport.abort()


@pytest.fixture
async def silent_proxy(pg_cluster: Cluster) -> AsyncIterator[SilentProxy]:
    async with SilentProxy(pg_cluster.port) as p:
        yield p


@dataclass
class IdleFault:
    """A way to kill the app's idle connection from outside, and whether its driver learns of
    it before the next use."""

    name: str
    url: URL
    kill: Callable[[], Awaitable[set[int]]]
    told: bool
    proxy: FaultProxy | None = None


@pytest.fixture
def pg_terminated(pg_database: PgDatabase) -> IdleFault:
    """pg_terminate_backend, the app connected directly: the server's goodbye and the closed
    socket reach asyncpg, which marks the connection closed."""
    return IdleFault(
        "postgresql, terminated",
        pg_database.url,
        lambda: terminate_pg_app_backends(pg_database),
        True,
    )


@pytest.fixture
def pg_terminated_silently(pg_database: PgDatabase, silent_proxy: SilentProxy) -> IdleFault:
    """pg_terminate_backend behind a network that lost the goodbye (`SilentProxy.silence`):
    asyncpg still believes the connection open; only a ping (or a statement) finds it dead."""

    async def kill() -> set[int]:
        silent_proxy.silence()
        return await terminate_pg_app_backends(pg_database)

    return IdleFault(
        "postgresql, terminated silently",
        pg_database.url_via(silent_proxy),
        kill,
        False,
        silent_proxy,
    )


@pytest.fixture
def mariadb_killed(mariadb: MariaDb) -> IdleFault:
    """KILL CONNECTION on MariaDB: aiomysql reads nothing while idle, so it learns of it only
    when it next uses the connection."""
    database = str(mariadb.url.database)
    return IdleFault(
        "mariadb, killed",
        mariadb.url,
        lambda: kill_mariadb_app_connections(mariadb.engine, database),
        False,
    )


PG_TERMINATED = pytest.param("pg_terminated", marks=pytest.mark.postgres, id="pg-terminated")
PG_SILENTLY = pytest.param("pg_terminated_silently", marks=pytest.mark.postgres, id="pg-silently")
MARIADB_KILLED = pytest.param("mariadb_killed", marks=pytest.mark.mariadb, id="mariadb-killed")
IDLE_FAULTS = [PG_TERMINATED, PG_SILENTLY, MARIADB_KILLED]


@pytest.fixture(params=IDLE_FAULTS)
def idle_fault(request: pytest.FixtureRequest) -> IdleFault:
    found: IdleFault = request.getfixturevalue(request.param)
    return found


PING_AFTER = 0.2  # s: POOL_PING_AFTER_IDLE in the test
IDLE_WAIT = PING_AFTER + 0.1  # s the connection sits idle after it was killed: past the setting


def one_connection(
    fault: IdleFault, ping_after: float, statement_timeout_ms: int = 500
) -> Settings:
    """The app's settings for the idle-connection tests: POOL_SIZE=1 (its only connection is
    the one killed) and POOL_PING_AFTER_IDLE=`ping_after`."""
    return settings_for(
        fault.url,
        pool_size=1,
        pool_max_overflow=0,
        pool_ping_after_idle=ping_after,
        db_connect_timeout=0.5,  # the data path's ping waits this long for an answer
        # 500: asyncpg's command_timeout 2.5 s, which bounds SQLAlchemy's ping
        statement_timeout_ms=statement_timeout_ms,
    )


async def kill_its_connection(api: Api, fault: IdleFault, where: str) -> None:
    """Kill the app's one connection from outside: kept by the data path between units of work
    (`held`), or first given back to SQLAlchemy's pool (`pooled`, as before an ORM session)."""
    if where == "pooled":
        await api.state.db.release_idle()
    killed = await fault.kill()
    assert len(killed) == 1, f"the app's one connection ({where}): {killed}"


async def first_read(api: Api) -> None:
    first = await ends_within(api.client.get("/users/count"), "a read")
    assert first.status_code == 200, first.text


@pytest.mark.parametrize("where", ["held", "pooled"])
async def test_a_connection_idle_past_pool_ping_after_idle_is_pinged_before_use(
    idle_fault: IdleFault, where: str
) -> None:
    """POOL_PING_AFTER_IDLE=0.2: the app's only connection (POOL_SIZE=1) is killed from
    outside while idle, kept by the data path between units of work (`held`) or given back to
    SQLAlchemy's pool (`pooled`, as before an ORM session). After it sat idle past the setting,
    the very first request is 200: the ping found it dead and a new connection served.

    The wait is on the clock (`IDLE_WAIT`): the ping is due only once the connection has sat
    idle that long, and nothing else signals it."""
    async with in_process_app(one_connection(idle_fault, PING_AFTER), idle_fault.proxy) as api:
        await first_read(api)
        await kill_its_connection(api, idle_fault, where)
        await asyncio.sleep(IDLE_WAIT)

        response = await ends_within(api.client.get("/users/count"), "the first read after")
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("where", ["held", "pooled"])
async def test_control_a_dead_connection_not_yet_due_for_a_ping(
    idle_fault: IdleFault, where: str
) -> None:
    """The control: the same sequence with POOL_PING_AFTER_IDLE=60, so no ping is due. What
    happens then depends on whether the driver was told:

    - asyncpg, connected directly, read the server's goodbye and the closed socket: the data
      path sees `is_closed()` (`database._closed`) and never hands the connection out: 200.
      (For this fault the ping test above proves nothing on its own; this control shows why.)
    - asyncpg behind a network that lost the goodbye, and aiomysql (which reads nothing while
      idle): the dead connection is used. The first request is a 503 "Database unavailable"
      (asyncpg: its statement unanswered until command_timeout, STATEMENT_TIMEOUT_MS + 2 s;
      aiomysql: "lost connection" at once), never a 500 nor a wrong answer; the connection is
      dropped and the next request is 200.

    So where the driver is not told, only the ping saves the first request."""
    async with in_process_app(one_connection(idle_fault, 60), idle_fault.proxy) as api:
        await first_read(api)
        await kill_its_connection(api, idle_fault, where)
        await asyncio.sleep(IDLE_WAIT)

        response = await ends_within(api.client.get("/users/count"), "the first read after")
        if idle_fault.told:
            assert response.status_code == 200, response.text
        else:
            assert_db_unavailable(response, f"{idle_fault.name}: the dead connection used")
            again = await ends_within(api.client.get("/users/count"), "the next read")
            assert again.status_code == 200, again.text


@pytest.mark.parametrize("where", ["held", "pooled"])
async def test_the_ping_ends_without_a_statement_timeout(
    pg_terminated_silently: IdleFault, where: str
) -> None:
    """STATEMENT_TIMEOUT_MS=0 ("no limit", as documented) leaves asyncpg without a
    command_timeout. The ping of a silently dead connection must still end, and the first
    request be served (200), not hang: the data path's own ping (`held`) waits
    DB_CONNECT_TIMEOUT; SQLAlchemy's (`pooled`) has no bound of its own."""
    fault = pg_terminated_silently
    settings = one_connection(fault, PING_AFTER, statement_timeout_ms=0)
    assert fault.proxy is not None
    async with in_process_app(settings, fault.proxy) as api:
        await first_read(api)
        await kill_its_connection(api, fault, where)
        await asyncio.sleep(IDLE_WAIT)

        response = await ends_within(
            api.client.get("/users/count"), "the first read after", on_hang=fault.proxy.cut
        )
        assert response.status_code == 200, response.text


# POOL_PING_AFTER_IDLE=0: a pooled connection is pinged before every use, however briefly it
# sat idle. The faults are the idle-connection faults above where the driver is not told that
# its connection died (so that only a ping can save the next request): PostgreSQL terminated
# behind a network that lost the goodbye, and MariaDB's KILL CONNECTION.
# `test_control_a_dead_connection_not_yet_due_for_a_ping` (POOL_PING_AFTER_IDLE=60) shows the
# same sequence answering 503 without the ping.
UNTOLD = [PG_SILENTLY, MARIADB_KILLED]


@pytest.fixture(params=UNTOLD)
def untold(request: pytest.FixtureRequest) -> IdleFault:
    """A way to kill the app's connection that its driver does not notice while idle."""
    found: IdleFault = request.getfixturevalue(request.param)
    return found


async def test_pool_ping_after_idle_0_pings_a_connection_before_every_use(
    untold: IdleFault,
) -> None:
    """POOL_PING_AFTER_IDLE=0, POOL_SIZE=1: the app's only connection is killed from outside
    right after a request, with no idle wait, once while the data path holds it between units
    of work and once after it went back to SQLAlchemy's pool. Each time the very next request
    is 200: the ping before its use found the connection dead and a new one served. With the
    ping due only after an idle time (the control's 60 s) that request is a 503."""
    async with in_process_app(one_connection(untold, 0), untold.proxy) as api:
        await first_read(api)
        for where in ("held", "pooled"):
            await kill_its_connection(api, untold, where)
            response = await ends_within(api.client.get("/users/count"), f"the read ({where})")
            assert response.status_code == 200, f"{where}: {response.status_code} {response.text}"

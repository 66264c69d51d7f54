"""What each backend's connections are set up to do, asked of the servers through the data path
(`Database.reader()` / `writer()` on an engine built as the app builds it):

- SQLite runs in WAL mode, and its writers have a lane of their own (one slot, one more pooled
  connection): a writer gets in while readers hold every reader slot.
- PostgreSQL reads in autocommit mode (no BEGIN, no COMMIT); MariaDB's connections use UTC and
  READ COMMITTED, and its reads are bracketed by BEGIN and COMMIT.

Every test runs on the three backends and states what each one must show: a check that does not
apply to a backend asserts that backend's own behaviour instead of passing by default.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, literal_column, select, text
from sqlalchemy.engine import URL, make_url

from asyncblog.config import Settings
from asyncblog.db.database import Database
from asyncblog.db.statements import Statement
from tests.fixtures.app import empty_tables
from tests.fixtures.cluster import PgDatabase
from tests.fixtures.databases import Backend, settings_for
from tests.fixtures.faults import members
from tests.fixtures.servers import in_process_app

# The writers' lane test: a small pool and a short POOL_TIMEOUT, so that a writer stuck behind
# the readers fails (503 after POOL_TIMEOUT) instead of hanging; SLACK is what a bound on a wait
# allows beyond POOL_TIMEOUT.
POOL = 3
POOL_TIMEOUT = 2.0
SLACK = 5.0


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[Database]:
    """A Database with its own engine and pool, as the app builds it; disposed of at the end."""
    db = Database.from_settings(settings)
    try:
        yield db
    finally:
        await db.dispose()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the other tasks run until `condition` holds (they only need to reach a queue: no I/O
    is involved, so a bounded number of loop turns is enough)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


# ---------------------------------------------------------------------------- session settings

# What the app's connections are set to, per backend: (the statement asking, what it answers).
# SQLite: the WAL journal. PostgreSQL: UTC. MariaDB: UTC and READ COMMITTED (the server's own
# defaults here are SYSTEM and REPEATABLE-READ; MariaDB 10.11 spells the isolation
# `@@tx_isolation`, `@@transaction_isolation` exists from 11.1 on).
SETTINGS: dict[str, tuple[Statement, tuple[Any, ...]]] = {
    "sqlite": (Statement(lambda: text("PRAGMA journal_mode")), ("wal",)),
    "postgresql": (
        Statement(lambda: select(literal_column("current_setting('TimeZone')"))),
        ("UTC",),
    ),
    "mariadb": (
        Statement(
            lambda: select(
                literal_column("@@session.time_zone"), literal_column("@@session.tx_isolation")
            )
        ),
        ("+00:00", "READ-COMMITTED"),
    ),
}


def fresh_url(backend: Backend, tmp_path: Path) -> URL:
    """The backend's database; for SQLite a new file, as WAL, once set, stays with the file:
    only a new one shows what this engine's connections do."""
    if backend.name == "sqlite":
        return make_url(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    return backend.url


async def test_app_connections_have_each_backends_settings(
    backend: Backend, tmp_path: Path
) -> None:
    """SQLite's journal is WAL (readers and the writer do not block each other); MariaDB's
    sessions are UTC and READ COMMITTED; PostgreSQL's are UTC."""
    statement, expected = SETTINGS[backend.name]
    settings = settings_for(fresh_url(backend, tmp_path))
    async with database(settings) as db, db.reader() as link:
        answer = await link.row(statement)
    assert answer is not None
    assert tuple(str(value) for value in answer) == expected


# What bounds a statement, per backend (the question, and its answer for STATEMENT_TIMEOUT_MS
# 5000 and 0): PostgreSQL's statement_timeout; MariaDB's max_statement_time, in seconds (0: no
# bound; this server's global is 0); SQLite has no statement bound, its one bound on a wait is
# SQLITE_BUSY_TIMEOUT_MS, which the setting leaves as it is.
STATEMENT_BOUND: dict[str, tuple[Statement, dict[int, str]]] = {
    "postgresql": (
        Statement(lambda: select(literal_column("current_setting('statement_timeout')"))),
        {5000: "5s", 0: "0"},
    ),
    "mariadb": (
        Statement(lambda: select(literal_column("@@session.max_statement_time"))),
        {5000: "5.0", 0: "0.0"},
    ),
    "sqlite": (Statement(lambda: text("PRAGMA busy_timeout")), {5000: "5000", 0: "5000"}),
}


@pytest.mark.parametrize("timeout_ms", [5000, 0])
async def test_statement_timeout_ms_bounds_the_app_connections_and_0_none(
    backend: Backend, timeout_ms: int
) -> None:
    """STATEMENT_TIMEOUT_MS, asked of the server on the app's own connection: 5000 is the
    session's bound (PostgreSQL `5s`, MariaDB 5 s), and 0 leaves none (PostgreSQL `0`, MariaDB
    0). SQLite bounds no statement: its busy timeout stays SQLITE_BUSY_TIMEOUT_MS either way."""
    statement, expected = STATEMENT_BOUND[backend.name]
    settings = settings_for(backend.url, statement_timeout_ms=timeout_ms)
    async with database(settings) as db, db.reader() as link:
        answer = await link.value(statement)
    shown = str(float(answer)) if backend.name == "mariadb" else str(answer)
    assert shown == expected[timeout_ms]


# ---------------------------------------------------------------------------- reads

# How a read on its own runs, per backend: in autocommit (no BEGIN, no COMMIT: one round trip).
# MariaDB's connections are out of autocommit in SQLAlchemy's pool (a statement would begin a
# transaction); the data path switches them to autocommit while it holds them.
READS = {"postgresql": "autocommit", "sqlite": "autocommit", "mariadb": "autocommit"}

BACKEND_PID = Statement(lambda: select(func.pg_backend_pid()))
IN_TRANSACTION = Statement(lambda: select(literal_column("@@in_transaction")))
ONE = Statement(lambda: select(literal_column("1")))


async def how_a_read_runs(backend: Backend, db: Database) -> tuple[str, str]:
    """("autocommit" or "BEGIN ... COMMIT", what the server showed), from the server itself:

    - PostgreSQL: after the unit, its backend in `pg_stat_activity` (asked on another
      connection). `idle` with the read as its last statement means that no COMMIT or ROLLBACK
      followed the read and that no transaction is open: the read was in none. (A timestamp
      check cannot tell: over the extended protocol `now()` is the Bind's time and
      `statement_timestamp()` the Execute's, even in autocommit.)
    - MariaDB: `@@in_transaction` during the read (a statement reading no table opens no
      transaction by itself, and none in autocommit: 1 only if BEGIN was sent).
    - SQLite: the statements SQLite itself ran for the unit (its trace callback).
    """
    dialect = db.engine.dialect
    if backend.name == "postgresql":
        async with db.reader() as link:
            pid = await link.value(BACKEND_PID)
        async with db.engine.connect() as other:
            state, query = (
                await other.execute(
                    text("SELECT state, query FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pid},
                )
            ).one()
        shown = f"state {state!r}, last statement {query!r}"
        sql = BACKEND_PID.compiled(dialect).sql
        return ("autocommit" if (state, query) == ("idle", sql) else "BEGIN ... COMMIT"), shown
    if backend.name == "mariadb":
        async with db.reader() as link:
            inside = await link.value(IN_TRANSACTION)
        return ("BEGIN ... COMMIT" if int(inside) else "autocommit"), f"@@in_transaction={inside}"
    ran: list[str] = []
    async with db.reader() as link:
        await link.connection.set_trace_callback(ran.append)
        try:
            await link.value(ONE)
        finally:
            await link.connection.set_trace_callback(None)
    sql = ONE.compiled(dialect).sql
    return ("autocommit" if ran == [sql] else "BEGIN ... COMMIT"), f"SQLite ran {ran}"


async def test_a_read_runs_in_autocommit(backend: Backend) -> None:
    """A unit of work that reads sends no BEGIN or COMMIT, on every backend (on MariaDB they
    were sent, until the data path switched its connections to autocommit)."""
    async with database(settings_for(backend.url)) as db:
        await how_a_read_runs(backend, db)  # the prepared statement and the connection exist
        observed, shown = await how_a_read_runs(backend, db)
    assert observed == READS[backend.name], shown


# ---------------------------------------------------------------------------- writers' lane

# Whether a writer passes readers that hold every reader slot: on SQLite it has a lane of its
# own (one slot and one more pooled connection); elsewhere readers and writers share one gate
# and the writer queues in arrival order.
WRITER_HAS_A_LANE = {"sqlite": True, "postgresql": False, "mariadb": False}


async def test_sqlite_writers_have_a_lane_of_their_own(backend: Backend) -> None:
    """POOL readers take every reader slot and hold their connections (no overflow allowed);
    one more reader queues. On SQLite a writer then gets in and writes while they all still
    hold (with a shared gate it would wait for them and fail after POOL_TIMEOUT: the readers
    let go only once the writer is done). On PostgreSQL and MariaDB it queues behind the
    waiting reader and gets in once the readers let go."""
    settings = settings_for(
        backend.url, pool_size=POOL, pool_max_overflow=0, pool_timeout=POOL_TIMEOUT
    )
    lane = WRITER_HAS_A_LANE[backend.name]
    async with database(settings) as db:
        release = asyncio.Event()
        all_in = asyncio.Event()
        holding = 0

        async def read_and_hold() -> None:
            nonlocal holding
            async with db.reader() as link:
                await link.value(ONE)
                holding += 1
                if holding == POOL:
                    all_in.set()
                await release.wait()

        readers = [asyncio.create_task(read_and_hold()) for _ in range(POOL)]

        async def write() -> tuple[int, int, bool]:
            async with db.writer() as link, link.transaction():
                await link.value(ONE)
                _slots, in_use, waiting = db.admission.usage()
                return in_use, waiting, not any(r.done() for r in readers)

        tasks: list[asyncio.Task[Any]] = list(readers)
        try:
            try:
                await asyncio.wait_for(all_in.wait(), POOL_TIMEOUT + SLACK)
            except TimeoutError:
                failed = [r.exception() for r in readers if r.done()]
                raise AssertionError(f"not all {POOL} readers got in: {failed}") from None
            readers.append(asyncio.create_task(read_and_hold()))  # every reader slot is taken
            tasks.append(readers[-1])
            await until(lambda: db.admission.usage()[2] == 1, "the extra reader queues")
            writer = asyncio.create_task(write())
            tasks.append(writer)
            if lane:
                in_use, waiting, readers_hold = await asyncio.wait_for(writer, POOL_TIMEOUT + SLACK)
                # inside: every reader slot and the writers' lane in use, the extra reader
                # still queued, and none of the readers gone
                assert (in_use, waiting, readers_hold) == (POOL + 1, 1, True)
            else:
                await until(lambda: db.admission.usage()[2] == 2, "the writer queues too")
                assert not writer.done()
                assert db.admission.usage()[:2] == (POOL, POOL)
                release.set()
                _in_use, waiting, _readers_hold = await asyncio.wait_for(
                    writer, POOL_TIMEOUT + SLACK
                )
                assert waiting == 0  # it got in after the reader queued before it
        finally:
            release.set()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert failures == []


async def test_the_orm_takes_back_the_connections_the_data_path_holds(backend: Backend) -> None:
    """With one connection in the pool, held by the data path after a read, an ORM session (the
    admin's bulk import) still gets it at once: the held connections go back to SQLAlchemy's
    pool first. Otherwise it would wait POOL_TIMEOUT and answer 503."""
    pool_timeout = 3
    settings = settings_for(
        backend.url, pool_size=1, pool_max_overflow=0, pool_timeout=pool_timeout
    )
    try:
        async with in_process_app(settings) as api:
            # the admin promoted through another engine: the app's one connection stays its own
            admin, (user,) = await members(api.client, backend.engine, 1)
            assert (await api.client.get(f"/users/{user.id}")).status_code == 200
            assert api.state.db.connections()[1] >= 1, "the data path holds no connection"
            started = asyncio.get_running_loop().time()
            users = [
                {"username": "orm_after", "email": "oa@example.com", "password": "password123"}
            ]
            created = await api.client.post("/users/bulk", json={"users": users}, headers=admin)
            took = asyncio.get_running_loop().time() - started
    finally:  # real commits on the session's database: the isolated tests expect it empty
        await empty_tables(backend.engine)
    assert created.status_code == 201, created.text
    assert took < pool_timeout, took  # it did not wait for the pool's timeout


async def test_a_connection_older_than_pool_recycle_is_replaced(pg_database: PgDatabase) -> None:
    """POOL_RECYCLE: a connection the data path holds is handed back for SQLAlchemy to recycle
    once it is older than that; the next unit of work runs on a new backend. (An explicit wait
    on the clock: age is the point.)"""
    settings = settings_for(pg_database.url, pool_size=1, pool_max_overflow=0, pool_recycle=1)
    async with in_process_app(settings) as api:
        user = await api.register()
        assert (await api.client.get(f"/users/{user['id']}")).status_code == 200
        first = {c["pid"] for c in await pg_database.app_connections()}
        assert (await api.client.get(f"/users/{user['id']}")).status_code == 200
        assert {c["pid"] for c in await pg_database.app_connections()} == first  # kept
        await asyncio.sleep(1.5)
        assert (await api.client.get(f"/users/{user['id']}")).status_code == 200
        second = {c["pid"] for c in await pg_database.app_connections()}
    assert first and second and not first & second, (first, second)

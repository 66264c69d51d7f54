"""The database of one process, and the one data path every request takes to it.

A request's unit of work holds a `Reader` or a `Writer` (`db.reader()`, `db.writer()`): one of
the pool's slots (`Admission`, first come first served), and under it one driver connection of
SQLAlchemy's pool (one pool, with its recycling, pinging and invalidation), which the data path
keeps between units of work while it is fresh (`_Held`). Statements are SQLAlchemy Core,
compiled once per dialect (`db.statements.Statement`), and run on the driver connection itself:
asyncpg, aiosqlite or aiomysql. Why not through SQLAlchemy's `AsyncConnection`: measured on
`GET /posts/{id}`, its checkout and execution (greenlet switches, the connection and result
wrappers, per-execution cache keys) cost more CPU than the statement on the bare connection.

Every error a driver raises leaves the link translated (`db.errors.translate`): 503 for an
outage (and the connection is dropped), `Busy` for a deadlock, `UniqueViolation`, ...

Transactions: one statement runs on its own (PostgreSQL and SQLite autocommit: no BEGIN or
COMMIT round trips); `writer.transaction()` groups several (SQLite: `BEGIN IMMEDIATE`, so writers
queue for the write lock instead of failing halfway). A connection handed over inside a
transaction (a test's outer one) gets a savepoint per unit instead, so a failed statement does
not abort the outer transaction.

The ORM session factories (`session`, `write_session`) remain for what is still written
with the ORM (bulk imports, the command line); they share the same engine and pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import literal, literal_column, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from asyncblog.config import Settings, dialect_of
from asyncblog.db import consistency
from asyncblog.db.admission import Admission
from asyncblog.db.engine import SQLITE_BEGIN_OPTION, create_engine, in_transaction
from asyncblog.db.errors import connection_lost, translate
from asyncblog.db.statements import Compiled, Statement
from asyncblog.db.tracing import SYSTEMS, instrument_engine, statement_span
from asyncblog.errors import ServiceError, Unavailable
from asyncblog.metrics import REPLICA_READS, REPLICA_WAIT


class _Driver:
    """The few calls the data path makes, per driver."""

    def fetch(self, con: Any, sql: str, args: Sequence[Any]) -> Awaitable[Sequence[Sequence[Any]]]:
        """The rows of a statement, unconverted: the driver's own awaitable where it has one, so
        the data path's statements pass through no coroutine of ours here (each level of
        coroutine is passed again on every suspension of the request)."""
        raise NotImplementedError

    async def execute(self, con: Any, sql: str) -> None:
        raise NotImplementedError

    async def alive(self, con: Any, within: float) -> bool:
        """A ping of a connection that sat idle (a server restart, a proxy's idle timeout)."""
        try:
            async with asyncio.timeout(within):
                await self.execute(con, "SELECT 1")
        except Exception:
            return False
        return True

    async def affected(self, con: Any, sql: str, args: Sequence[Any]) -> int:
        """Run a write; how many rows it changed."""
        raise NotImplementedError

    def begin(self, write: bool) -> str:
        return "BEGIN"

    async def taken(self, con: Any) -> None:
        """The data path takes this connection from SQLAlchemy's pool."""

    async def returned(self, con: Any) -> None:
        """It goes back to SQLAlchemy's pool: as SQLAlchemy expects to find it."""


class _Asyncpg(_Driver):
    def fetch(self, con: Any, sql: str, args: Sequence[Any]) -> Awaitable[Sequence[Sequence[Any]]]:
        rows: Awaitable[Sequence[Sequence[Any]]] = con.fetch(sql, *args)
        return rows

    async def execute(self, con: Any, sql: str) -> None:
        await con.execute(sql)

    async def affected(self, con: Any, sql: str, args: Sequence[Any]) -> int:
        status: str = await con.execute(sql, *args)  # "UPDATE 2"
        return int(status.rsplit(" ", 1)[-1])


class _Aiosqlite(_Driver):
    def fetch(self, con: Any, sql: str, args: Sequence[Any]) -> Awaitable[Sequence[Sequence[Any]]]:
        rows: Awaitable[Sequence[Sequence[Any]]] = con.execute_fetchall(sql, args)
        return rows

    async def execute(self, con: Any, sql: str) -> None:
        await con.execute(sql)

    async def affected(self, con: Any, sql: str, args: Sequence[Any]) -> int:
        cursor = await con.execute(sql, args)
        try:
            return int(cursor.rowcount)
        finally:
            await cursor.close()

    def begin(self, write: bool) -> str:
        return "BEGIN IMMEDIATE" if write else "BEGIN"


class _Aiomysql(_Driver):
    """SQLAlchemy keeps MariaDB's connections out of autocommit (its transactions begin with
    the first statement); the data path switches them to autocommit while it has them, so a
    statement on its own is one round trip instead of BEGIN, the statement and COMMIT, and its
    transactions begin with an explicit BEGIN as on the other databases."""

    async def taken(self, con: Any) -> None:
        await con.autocommit(True)

    async def returned(self, con: Any) -> None:
        await con.autocommit(False)

    async def fetch(self, con: Any, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        async with con.cursor() as cursor:
            await cursor.execute(sql, args or None)
            rows: Sequence[Sequence[Any]] = await cursor.fetchall()
            return rows

    async def execute(self, con: Any, sql: str) -> None:
        async with con.cursor() as cursor:
            await cursor.execute(sql)

    async def affected(self, con: Any, sql: str, args: Sequence[Any]) -> int:
        async with con.cursor() as cursor:
            return int(await cursor.execute(sql, args or None))


class _Traced(_Driver):
    """A driver with a span around each statement it sends (TELEMETRY=true): `db.tracing`."""

    def __init__(self, driver: _Driver, dialect: str) -> None:
        self._driver = driver
        self._system = SYSTEMS.get(dialect, dialect)

    async def fetch(self, con: Any, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        with statement_span(self._system, sql) as span:
            rows = await self._driver.fetch(con, sql, args)
            span.set_attribute("db.response.returned_rows", len(rows))
            return rows

    async def execute(self, con: Any, sql: str) -> None:
        with statement_span(self._system, sql):
            await self._driver.execute(con, sql)

    async def affected(self, con: Any, sql: str, args: Sequence[Any]) -> int:
        with statement_span(self._system, sql) as span:
            count = await self._driver.affected(con, sql, args)
            span.set_attribute("db.response.affected_rows", count)
            return count

    async def alive(self, con: Any, within: float) -> bool:
        return await self._driver.alive(con, within)  # a ping is no statement of the request

    def begin(self, write: bool) -> str:
        return self._driver.begin(write)

    async def taken(self, con: Any) -> None:
        await self._driver.taken(con)

    async def returned(self, con: Any) -> None:
        await self._driver.returned(con)


DRIVERS: dict[str, type[_Driver]] = {
    "postgresql": _Asyncpg,
    "sqlite": _Aiosqlite,
    "mysql": _Aiomysql,
}


_PING = Statement(lambda: select(literal(1)))
# WAL positions as integers (bytes from 0/0): where the primary has written to, and how far a
# replica has replayed.
_WRITTEN = Statement(
    lambda: select(literal_column("(pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"))
)
_REPLAYED = Statement(
    lambda: select(literal_column("(pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"))
)
# A replica's state: how far it replayed, and how far behind it is in seconds (0 when it has
# replayed all it received: an idle primary sends nothing, and the last replayed transaction
# grows old without the replica being behind; unbounded when it has something to replay and
# has replayed no transaction since it started).
_REPLICA_STATE = Statement(
    lambda: select(
        literal_column("(pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"),
        literal_column(
            "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
            "ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), "
            "'Infinity') END::float8"
        ),
    )
)
CHECK_EVERY = 1.0  # seconds between two looks at a replica's lag, per process


class Reader:
    """One driver connection for one unit of work that reads (`Database.reader()`)."""

    __slots__ = ("_depth", "_driver", "_joined", "connection", "dialect")
    writes = False  # a Writer's statements may write

    def __init__(self, connection: Any, dialect: Dialect, driver: _Driver) -> None:
        self.connection = connection
        self.dialect = dialect
        self._driver = driver
        # Handed over inside a transaction (a test's): every unit becomes a savepoint.
        self._joined = in_transaction(connection)
        self._depth = 0

    def _on_its_own(self) -> bool:
        """A statement outside any transaction of ours that must still get one: a savepoint in
        a test's outer transaction."""
        return self._depth == 0 and self._joined

    def _compiled(self, statement: Statement) -> Compiled:
        """A Reader runs no statement that writes: it may be a replica's, or in a transaction
        that is not the write's (a write taken for a read fails here, in every test of it)."""
        compiled = statement.compiled(self.dialect)
        if compiled.writes and not self.writes:
            raise TypeError(f"a statement that writes went through a Reader: {compiled.sql[:80]}")
        return compiled

    async def rows(self, statement: Statement, **params: Any) -> list[tuple[Any, ...]]:
        """All rows of `statement`, converted by the column types."""
        compiled = self._compiled(statement)
        args = compiled.args(params)
        if self._on_its_own():
            async with self._transaction():
                rows = await self._driver.fetch(self.connection, compiled.sql, args)
        else:
            rows = await self._driver.fetch(self.connection, compiled.sql, args)
        return compiled.convert(rows)

    async def row(self, statement: Statement, **params: Any) -> tuple[Any, ...] | None:
        rows = await self.rows(statement, **params)
        return rows[0] if rows else None

    async def value(self, statement: Statement, **params: Any) -> Any:
        """The first column of the first row (None without a row)."""
        compiled = self._compiled(statement)
        rows: Sequence[Sequence[Any]]
        if compiled.converts or self._on_its_own():
            rows = await self.rows(statement, **params)
        else:
            rows = await self._driver.fetch(self.connection, compiled.sql, compiled.args(params))
        return rows[0][0] if rows else None

    @asynccontextmanager
    async def _transaction(self, *, write: bool = True) -> AsyncIterator[None]:
        """Run the block as one transaction (a savepoint inside another), committed at its end
        and rolled back if it raises."""
        con, driver = self.connection, self._driver
        nested = self._depth > 0 or self._joined
        name = f"asyncblog_{self._depth}"
        await driver.execute(con, f"SAVEPOINT {name}" if nested else driver.begin(write))
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if in_transaction(con) or nested:
                await driver.execute(con, f"ROLLBACK TO SAVEPOINT {name}" if nested else "ROLLBACK")
                if nested:
                    await driver.execute(con, f"RELEASE SAVEPOINT {name}")
            raise
        self._depth -= 1
        await driver.execute(con, f"RELEASE SAVEPOINT {name}" if nested else "COMMIT")


class Writer(Reader):
    """One driver connection for one unit of work that writes (`Database.writer()`): on SQLite
    it queued in the writers' lane. Only a Writer runs UPDATEs and DELETEs and groups
    statements into a transaction; the statements that write take a Writer."""

    __slots__ = ()
    writes = True

    async def count(self, statement: Statement, **params: Any) -> int:
        """Run a write (an UPDATE, a DELETE); how many rows it changed."""
        compiled = statement.compiled(self.dialect)
        args = compiled.args(params)
        if self._on_its_own():
            async with self._transaction():
                return await self._driver.affected(self.connection, compiled.sql, args)
        return await self._driver.affected(self.connection, compiled.sql, args)

    def transaction(self) -> Any:
        """`async with writer.transaction():` the block as one transaction (SQLite: BEGIN
        IMMEDIATE; a savepoint inside another)."""
        return self._transaction(write=True)


# A source of driver connections: returns (connection, give_back(failure)).
Checkout = Callable[[], Awaitable[tuple[Any, Callable[[BaseException | None], Awaitable[None]]]]]


class Database:
    """The engine, the admission gate in front of its pool, and the data path (`link`)."""

    def __init__(self, engine: AsyncEngine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.dialect = dialect_of(engine.url)
        self.sql_dialect = engine.sync_engine.dialect  # what statements compile for
        self._driver = DRIVERS[self.dialect]()
        if settings is not None and settings.telemetry:
            self._driver = _Traced(self._driver, self.dialect)
            instrument_engine(engine)
        reader = writer = engine
        if self.dialect == "sqlite":
            writer = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        elif self.dialect == "postgresql" and not (settings and settings.pgbouncer):
            # asyncpg applies this on the client side: no statement, no round trip. (Not behind
            # PgBouncer: the ORM prepares a statement, then runs it; outside a transaction the
            # two may reach different server connections.)
            reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.session = async_sessionmaker(reader, expire_on_commit=False, autoflush=False)
        self.write_session = async_sessionmaker(writer, expire_on_commit=False, autoflush=False)
        pool = engine.sync_engine.pool
        # As many units of work at a time as the pool KEEPS connections: one above pool_size
        # ("overflow") is closed when returned, so admitting more would open and close a
        # connection per request under load. The overflow serves what is not gated
        # (readiness checks, a command line task).
        size = pool.size() if isinstance(pool, QueuePool) else 1
        timeout = pool._timeout if isinstance(pool, QueuePool) else 30.0
        if self.dialect == "sqlite" and size > 1:  # the pool has one more: the writers' lane
            self.admission = Admission(size - 1, timeout, writers=1)
        else:
            self.admission = Admission(size, timeout)
        self.checkout: Checkout = self._pool_checkout
        self.replicas: list[Database] = []  # with DATABASE_REPLICA_URLS (from_settings)
        self.replayed = 0  # a replica's last seen replay position
        self.down_until = 0.0  # a replica that failed is skipped until then
        self.lag_seconds = 0.0  # how far behind it was when last looked at
        self.checked_at = float("-inf")
        self._turn = 0
        self._replica_wait = (settings.replica_wait_ms / 1000) if settings else 0.1
        self._replica_down = settings.replica_down_seconds if settings else 5.0
        self._replica_max_lag = settings.replica_max_lag_seconds if settings else 10.0
        self._idle: list[_Held] = []
        self._closing = False
        self._ping_after = settings.pool_ping_after_idle if settings else 2.0
        self._ping_timeout = settings.db_connect_timeout if settings else 2.0
        self._recycle = settings.pool_recycle if settings else -1

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        db = cls(create_engine(settings), settings)
        if db.dialect == "postgresql":
            db.replicas = [
                cls(create_engine(settings, url), settings) for url in settings.replica_urls
            ]
        return db

    async def route_read(self) -> Database:
        """Where a read goes: a replica that has replayed what the client needs (asked, and
        waited for up to REPLICA_WAIT_MS), else the primary; the primary for the rest of a
        request that wrote. A replica that fails is skipped for REPLICA_DOWN_SECONDS."""
        if consistency.written.get() is not None:
            REPLICA_READS.labels(outcome="primary").inc()
            return self
        now = time.monotonic()
        for replica in self.replicas:
            if replica.down_until <= now and now - replica.checked_at >= CHECK_EVERY:
                await self._look_at(replica)
        bound = self._replica_max_lag or float("inf")  # 0: no bound
        up = [r for r in self.replicas if r.down_until <= now and r.lag_seconds <= bound]
        if not up:
            REPLICA_READS.labels(outcome="primary").inc()
            return self
        self._turn += 1
        replica = up[self._turn % len(up)]
        need = consistency.required.get()
        if need is None or replica.replayed >= need:
            REPLICA_READS.labels(outcome="replica").inc()
            return replica
        deadline = now + self._replica_wait
        waited = False
        while True:
            try:
                async with replica.reader() as link:
                    replica.replayed = int(await link.value(_REPLAYED) or 0)
            except Unavailable:
                replica.down_until = time.monotonic() + self._replica_down
                return self._waited(now, "primary", self)
            if replica.replayed >= need and not waited:
                REPLICA_READS.labels(outcome="replica").inc()
                return replica
            if replica.replayed >= need:
                return self._waited(now, "waited", replica)
            if time.monotonic() >= deadline:
                return self._waited(now, "primary", self)
            waited = True
            await asyncio.sleep(0.005)

    @staticmethod
    def _waited(since: float, outcome: str, then: Database) -> Database:
        """Count a read that had to wait for a replica, and how long, on its way to `then`."""
        REPLICA_READS.labels(outcome=outcome).inc()
        REPLICA_WAIT.labels(outcome=outcome).observe(time.monotonic() - since)
        return then

    async def _look_at(self, replica: Database) -> str:
        """Read a replica's replay position and lag: `ok`, `lagging` or `down` (skipped for
        REPLICA_DOWN_SECONDS)."""
        replica.checked_at = time.monotonic()
        try:
            async with replica.reader() as link:
                row = await link.row(_REPLICA_STATE)
        except Unavailable:
            replica.down_until = time.monotonic() + self._replica_down
            return "down"
        assert row is not None
        replica.replayed = max(replica.replayed, int(row[0] or 0))
        replica.lag_seconds = float(row[1] or 0.0)
        bound = self._replica_max_lag or float("inf")
        return "lagging" if replica.lag_seconds > bound else "ok"

    async def replica_states(self, within: float) -> dict[str, str]:
        """Each replica, by host:port, as `/readyz` reports it; one that does not answer within
        `within` seconds is down."""
        states = {}
        for replica in self.replicas:
            try:
                state = await asyncio.wait_for(self._look_at(replica), within)
            except TimeoutError:
                replica.down_until = time.monotonic() + self._replica_down
                state = "down"
            states[f"{replica.engine.url.host}:{replica.engine.url.port}"] = state
        return states

    async def note_written(self, link: Writer) -> None:
        """After a unit of work that wrote, with replicas: the primary's WAL position, for the
        client (asyncblog.db.consistency)."""
        position = await link.value(_WRITTEN)
        if position is not None:
            consistency.note_written(int(position))

    def slot(self, *, write: bool = False) -> Any:
        """One of the pool's slots for this task (re-entrant), without a connection yet."""
        return self.admission.slot(write=write)

    def reader(self) -> _LinkHold[Reader]:
        """`async with db.reader() as link:` a slot and a driver connection for one unit of
        work that reads; database errors leave it translated (`db.errors.translate`)."""
        return _LinkHold(self, Reader)

    def writer(self) -> _LinkHold[Writer]:
        """The same for a unit of work that writes (on SQLite it queues in the writers'
        lane)."""
        return _LinkHold(self, Writer)

    async def _pool_checkout(
        self,
    ) -> tuple[Any, Callable[[BaseException | None], Awaitable[None]]]:
        """A connection for one unit of work: one this process held on to since its last unit,
        else one from SQLAlchemy's pool."""
        idle = self._idle
        while idle:
            held = idle.pop()  # the most recently returned: the least likely to be stale
            now = time.monotonic()
            if _closed(held.con):  # closed by the server while idle
                await held.drop()
            elif 0 <= self._recycle < now - held.taken:
                await held.put_back()  # SQLAlchemy's pool recycles it
            elif now - held.idle_since < self._ping_after or await self._driver.alive(
                held.con, self._ping_timeout
            ):
                return held.con, held.give_back
            else:  # a dead one: those that sat idle as long are likely dead too
                await held.drop()
                await self.release_idle()
        fairy = await self.engine.raw_connection()
        for _ in range(self.admission.size):
            if not _closed(fairy.driver_connection):
                break
            # Closed by the server while idle (a restart, pg_terminate_backend): the pool's
            # idle ping runs only after POOL_PING_AFTER_IDLE; do not hand it out.
            await greenlet_spawn(fairy.invalidate)
            fairy = await self.engine.raw_connection()
        try:
            await self._driver.taken(fairy.driver_connection)
        except BaseException:
            await greenlet_spawn(fairy.invalidate)
            raise
        held = _Held(self, fairy, fairy.driver_connection, time.monotonic())
        return held.con, held.give_back

    async def ping(self) -> None:
        """One `SELECT 1` as a unit of work: in line with the requests (the readiness check),
        on a connection the data path keeps, so a flood of probes opens none."""
        async with self.reader() as link:
            await link.value(_PING)

    def connections(self) -> tuple[int, int]:
        """(busy, idle) connections of the pool, for the metrics: the ones the data path holds
        between units of work count as idle."""
        pool = self.engine.sync_engine.pool
        if not isinstance(pool, QueuePool):
            return 0, 0
        held = len(self._idle)
        return pool.checkedout() - held, pool.checkedin() + held

    async def release_idle(self) -> None:
        """Give the connections held between units of work back to SQLAlchemy's pool (before
        an ORM session needs one, and at the end)."""
        idle, self._idle = self._idle, []
        for held in idle:
            await held.put_back()

    async def reconnect(self) -> None:
        """Close every idle connection, held or pooled: the next units of work connect anew."""
        await self.release_idle()
        await self.engine.dispose()

    async def dispose(self) -> None:
        self._closing = True
        try:
            await self.release_idle()
        finally:
            await self.engine.dispose()
            for replica in self.replicas:
                await replica.dispose()


class _Held:
    """A connection of SQLAlchemy's pool that the data path keeps between units of work.

    Checking a connection out of SQLAlchemy's pool and back in costs two greenlet switches (9 us
    each here) and the pool's bookkeeping: about 30 us per unit of work, a tenth of a request.
    So the data path holds on to a connection it used, for the next unit of work, as long as it
    is fresh: one idle for POOL_PING_AFTER_IDLE seconds is pinged first (as SQLAlchemy's pool
    does here), one taken longer ago than POOL_RECYCLE goes back for SQLAlchemy to recycle, one
    that failed is invalidated. At most as many are held as units of work run at once (the
    admission gate's slots); an ORM session first takes them back (`release_idle`)."""

    __slots__ = ("con", "db", "fairy", "idle_since", "taken")

    def __init__(self, db: Database, fairy: Any, con: Any, taken: float) -> None:
        self.db = db
        self.fairy = fairy
        self.con = con
        self.taken = taken
        self.idle_since = taken

    async def give_back(self, failure: BaseException | None) -> None:
        db, con = self.db, self.con
        if failure is not None and _unusable(failure, con):
            await self.drop(failure)
            return
        try:
            if in_transaction(con):  # cut short: the transaction is rolled back here
                await db._driver.execute(con, "ROLLBACK")
        except BaseException as exc:
            await self.drop(exc)
            raise
        if db._closing or len(db._idle) >= db.admission.capacity:
            await self.put_back()
            return
        self.idle_since = time.monotonic()
        db._idle.append(self)

    async def put_back(self) -> None:
        """Back to SQLAlchemy's pool (which may close it: an overflow connection, a recycled
        one), in a greenlet as the pool awaits the driver from synchronous code."""
        try:
            await self.db._driver.returned(self.con)
        except Exception as exc:  # it broke meanwhile: not for SQLAlchemy's pool
            await self.drop(exc)
            return
        await greenlet_spawn(self.fairy.close)

    async def drop(self, cause: BaseException | None = None) -> None:
        """Invalidate a connection that failed. asyncpg's is cut first: SQLAlchemy's invalidation
        would close it politely, waiting up to 2 s for a server that may be stalled."""
        terminate = getattr(self.con, "terminate", None)
        if terminate is not None:
            terminate()
        await greenlet_spawn(self.fairy.invalidate, cause)


L = TypeVar("L", bound=Reader)


class _LinkHold(Generic[L]):
    """`Database.reader()` / `writer()`: a plain async context manager (every request enters
    one; a generator-based one costs several microseconds more)."""

    __slots__ = ("_db", "_give_back", "_kind", "_lease", "_link")

    def __init__(self, db: Database, kind: type[L]) -> None:
        self._db = db
        self._kind = kind

    async def __aenter__(self) -> L:
        primary = db = self._db
        if primary.replicas and not self._kind.writes:
            db = await primary.route_read()
        while True:
            lease = None
            try:
                lease = await db.admission.enter(write=self._kind.writes)
                con, self._give_back = await db.checkout()
                break
            except BaseException as exc:
                if lease is not None:
                    db.admission.leave(lease)
                error = translate(exc)
                if db is not primary and isinstance(error or exc, Unavailable):
                    # the replica is down: the primary serves the read
                    db.down_until = time.monotonic() + primary._replica_down
                    db = primary
                    continue
                if error is None or error is exc:
                    raise
                raise error from exc
        self._db, self._lease = db, lease
        self._link = self._kind(con, db.sql_dialect, db._driver)
        return self._link

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        failure = exc
        db = self._db
        try:
            if exc is None and db.replicas and isinstance(self._link, Writer):
                try:
                    await db.note_written(self._link)
                except Exception as lost:  # committed; the client gets no position this time
                    failure = lost
            await self._give_back(failure)
        finally:
            db.admission.leave(self._lease)
        if isinstance(exc, Exception) and not isinstance(exc, ServiceError):
            error = translate(exc)
            if error is not None:
                raise error from exc


def _unusable(failure: BaseException, con: Any) -> bool:
    """After this failure the connection cannot be trusted: it was lost, or a statement was cut
    off midway (cancelled, timed out on the client) and may still be running."""
    if isinstance(failure, Exception) and connection_lost(failure):
        return True
    cause = failure.__cause__
    if cause is not None and connection_lost(cause):
        return True
    if not isinstance(failure, Exception):  # cancelled mid-statement
        return True
    return _closed(con)


def _closed(con: Any) -> bool:
    closed = getattr(con, "is_closed", None)  # asyncpg
    if closed is not None:
        return bool(closed())
    return getattr(con, "closed", False) is True  # aiomysql

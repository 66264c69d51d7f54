"""The database of one process, and the one data path every request takes to it.

A request's unit of work holds a `Link`: one of the pool's slots (`Admission`, first come first
served), and under it one driver connection checked out of SQLAlchemy's pool (so there is one
pool, with its recycling, pinging and invalidation). Statements are SQLAlchemy Core, compiled
once per dialect (`db.statements.Statement`), and run on the driver connection itself:
asyncpg, aiosqlite or aiomysql. Why not through SQLAlchemy's `AsyncConnection`: measured on the
hot read, its checkout and execution (greenlet switches, the connection and result wrappers,
per-execution cache keys) cost more CPU than the query (about 75 us against 12 us).

Every error a driver raises leaves the link translated (`db.errors.translate`): 503 for an
outage (and the connection is dropped), `Busy` for a deadlock, `UniqueViolation`, ...

Transactions: one statement runs on its own (PostgreSQL and SQLite autocommit: no BEGIN or
COMMIT round trips); `link.transaction()` groups several (SQLite: `BEGIN IMMEDIATE`, so writers
queue for the write lock instead of failing halfway). A connection handed over inside a
transaction (a test's outer one) gets a savepoint per unit instead, so a failed statement does
not abort the outer transaction.

The ORM session factories (`session`, `write_session`) remain for what is still written
with the ORM (bulk imports, the command line); they share the same engine and pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from asyncblog.config import Settings, dialect_of
from asyncblog.db.admission import Admission
from asyncblog.db.engine import SQLITE_BEGIN_OPTION, create_engine, in_transaction
from asyncblog.db.errors import connection_lost, translate
from asyncblog.db.statements import Statement
from asyncblog.errors import ServiceError


class _Driver:
    """The few calls the data path makes, per driver."""

    async def fetch(self, con: Any, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def value(self, con: Any, sql: str, args: Sequence[Any]) -> Any:
        """The first column of the first row (None without a row), unconverted."""
        rows = await self.fetch(con, sql, args)
        return rows[0][0] if rows else None

    async def execute(self, con: Any, sql: str) -> None:
        raise NotImplementedError

    async def affected(self, con: Any, sql: str, args: Sequence[Any]) -> int:
        """Run a write; how many rows it changed."""
        raise NotImplementedError

    def begin(self, write: bool) -> str:
        return "BEGIN"


class _Asyncpg(_Driver):
    async def fetch(self, con: Any, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = await con.fetch(sql, *args)
        return rows

    async def value(self, con: Any, sql: str, args: Sequence[Any]) -> Any:
        return await con.fetchval(sql, *args)

    async def execute(self, con: Any, sql: str) -> None:
        await con.execute(sql)

    async def affected(self, con: Any, sql: str, args: Sequence[Any]) -> int:
        status: str = await con.execute(sql, *args)  # "UPDATE 2"
        return int(status.rsplit(" ", 1)[-1])


class _Aiosqlite(_Driver):
    async def fetch(self, con: Any, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = await con.execute_fetchall(sql, args)
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


DRIVERS: dict[str, type[_Driver]] = {
    "postgresql": _Asyncpg,
    "sqlite": _Aiosqlite,
    "mysql": _Aiomysql,
}


class Link:
    """One driver connection for one unit of work. Use through `Database.link()`."""

    __slots__ = ("_depth", "_driver", "_joined", "connection", "dialect")

    def __init__(self, connection: Any, dialect: Dialect, driver: _Driver) -> None:
        self.connection = connection
        self.dialect = dialect
        self._driver = driver
        # Handed over inside a transaction (a test's): every unit becomes a savepoint.
        self._joined = in_transaction(connection)
        self._depth = 0

    async def rows(self, statement: Statement, **params: Any) -> list[tuple[Any, ...]]:
        """All rows of `statement`, converted by the column types."""
        compiled = statement.compiled(self.dialect)
        args = compiled.args(params)
        if self._joined and self._depth == 0:
            async with self.transaction():
                rows = await self._driver.fetch(self.connection, compiled.sql, args)
        else:
            rows = await self._driver.fetch(self.connection, compiled.sql, args)
        return compiled.convert(rows)

    async def count(self, statement: Statement, **params: Any) -> int:
        """Run a write (an UPDATE, a DELETE); how many rows it changed."""
        compiled = statement.compiled(self.dialect)
        args = compiled.args(params)
        if self._joined and self._depth == 0:
            async with self.transaction():
                return await self._driver.affected(self.connection, compiled.sql, args)
        return await self._driver.affected(self.connection, compiled.sql, args)

    async def row(self, statement: Statement, **params: Any) -> tuple[Any, ...] | None:
        rows = await self.rows(statement, **params)
        return rows[0] if rows else None

    async def value(self, statement: Statement, **params: Any) -> Any:
        """The first column of the first row (None without a row)."""
        compiled = statement.compiled(self.dialect)
        if any(compiled.results) or (self._joined and self._depth == 0):
            rows = await self.rows(statement, **params)
            return rows[0][0] if rows else None
        return await self._driver.value(self.connection, compiled.sql, compiled.args(params))

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[None]:
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
            if in_transaction(con):
                await driver.execute(con, f"ROLLBACK TO SAVEPOINT {name}" if nested else "ROLLBACK")
                if nested:
                    await driver.execute(con, f"RELEASE SAVEPOINT {name}")
            raise
        self._depth -= 1
        await driver.execute(con, f"RELEASE SAVEPOINT {name}" if nested else "COMMIT")


# A source of driver connections: returns (connection, give_back(failure)).
Checkout = Callable[[], Awaitable[tuple[Any, Callable[[BaseException | None], Awaitable[None]]]]]


class Database:
    """The engine, the admission gate in front of its pool, and the data path (`link`)."""

    def __init__(self, engine: AsyncEngine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.dialect = dialect_of(engine.url)
        self._driver = DRIVERS[self.dialect]()
        reader = writer = engine
        if self.dialect == "sqlite":
            writer = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        elif self.dialect == "postgresql":
            # asyncpg applies this on the client side: no statement, no round trip.
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
        self.admission = Admission(size, timeout)
        self.checkout: Checkout = self._pool_checkout

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(create_engine(settings), settings)

    def slot(self) -> Any:
        """One of the pool's slots for this task (re-entrant), without a connection yet."""
        return self.admission.slot()

    def link(self) -> _LinkHold:
        """`async with db.link() as link:` a slot and a driver connection for one unit of
        work; database errors leave it translated (`db.errors.translate`)."""
        return _LinkHold(self)

    async def _pool_checkout(
        self,
    ) -> tuple[Any, Callable[[BaseException | None], Awaitable[None]]]:
        fairy = await self.engine.raw_connection()
        con = fairy.driver_connection
        for _ in range(self.admission.size):
            if not _closed(con):
                break
            # Closed by the server while idle (a restart, pg_terminate_backend): the pool's
            # idle ping runs only after POOL_PING_AFTER_IDLE; do not hand it out.
            await greenlet_spawn(fairy.invalidate)
            fairy = await self.engine.raw_connection()
            con = fairy.driver_connection

        async def give_back(failure: BaseException | None) -> None:
            if failure is not None and _unusable(failure, con):
                await greenlet_spawn(fairy.invalidate, failure)
                return
            try:
                if in_transaction(con):  # cut short: the transaction is rolled back here
                    await self._driver.execute(con, "ROLLBACK")
            except BaseException as exc:
                await greenlet_spawn(fairy.invalidate, exc)
                raise
            # Back to the pool (which may close it: an overflow connection, a recycled one),
            # in a greenlet as SQLAlchemy's pool awaits the driver from synchronous code.
            await greenlet_spawn(fairy.close)

        return con, give_back

    async def dispose(self) -> None:
        await self.engine.dispose()


class _LinkHold:
    """`Database.link()`: a plain async context manager (every request enters one; a
    generator-based one costs several microseconds more)."""

    __slots__ = ("_db", "_give_back", "_slot")

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __aenter__(self) -> Link:
        db = self._db
        self._slot = db.admission.slot()
        await self._slot.__aenter__()
        try:
            con, self._give_back = await db.checkout()
        except BaseException as exc:
            await self._slot.__aexit__(None, None, None)
            error = translate(exc)
            if error is None or error is exc:
                raise
            raise error from exc
        return Link(con, db.engine.dialect, db._driver)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        try:
            await self._give_back(exc)
        finally:
            await self._slot.__aexit__(None, None, None)
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

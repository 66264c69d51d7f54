"""The async engine, the session factories and what each database needs to behave.

One `Database` per process: created in the app's lifespan (or by a CLI command) and disposed at
the end. Per dialect:

- SQLite (aiosqlite): WAL journal, foreign keys on, a busy timeout, and transactions begun by us
  (the driver's own implicit BEGIN is switched off) so that savepoints work and a writing request
  can take the write lock up front with ``BEGIN IMMEDIATE``.
- PostgreSQL (asyncpg): pooled connections pinged before use when they were idle (see
  `_ping_idle_connections`), an application name, UTC, a statement timeout (server side, and a
  client-side bound for a hung network), and reading requests in autocommit mode: a single
  SELECT needs no BEGIN/ROLLBACK round trips around it.
- MariaDB/MySQL (aiomysql): ``pool_recycle`` (the server closes idle connections), utf8mb4, UTC,
  READ COMMITTED, statement and lock-wait timeouts.

Requests take one of `POOL_SIZE` slots (FIFO) before they touch the pool; see
`Database.connection_slot`.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, DateTime, Numeric, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql import expression
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator, TypeEngine

from asyncblog.config import Settings
from asyncblog.errors import DB_UNAVAILABLE, Unavailable
from asyncblog.pools import DRIVER_ERRORS, DriverPool, SlotGate

logger = logging.getLogger("asyncblog.error")

UTC = dt.UTC
CENT = Decimal("0.01")
SQLITE_BEGIN_OPTION = "asyncblog_sqlite_begin"
POOL_BUSY = "Too many requests are waiting for the database; retry shortly"


@dataclass(slots=True)
class _Lease:
    """The pool slot the current task holds (see Database.connection_slot)."""

    db: Database
    held: bool = True


_lease: contextvars.ContextVar[_Lease | None] = contextvars.ContextVar(
    "asyncblog_slot_lease", default=None
)


class _SlotHold:
    """`Database.connection_slot()`: a plain async context manager, as every request enters one
    (a generator-based one costs a few microseconds more)."""

    __slots__ = ("_db", "_lease", "_token")

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lease: _Lease | None = None

    async def __aenter__(self) -> None:
        held = _lease.get()
        if held is not None and held.db is self._db and held.held:
            return  # re-entrant: the slot this task holds covers this too
        await self._db._take_slot()
        self._lease = _Lease(self._db)
        self._token = _lease.set(self._lease)

    async def __aexit__(self, *exc_info: object) -> None:
        lease = self._lease
        if lease is None:
            return
        try:
            _lease.reset(self._token)
        except ValueError:  # exited in another context than entered: clear it there
            _lease.set(None)
        if lease.held:
            lease.held = False  # a child task that copied the context must not use it now
            self._db._slots.release()


@asynccontextmanager
async def slot_released() -> AsyncIterator[None]:
    """Give the current task's pool slot back during slow work that needs no connection
    (Argon2 in a thread), and queue for one again afterwards. The caller must not hold a
    connection meanwhile (commit first)."""
    lease = _lease.get()
    if lease is None or not lease.held:
        yield
        return
    lease.held = False
    lease.db._slots.release()
    yield  # failed or cancelled: the request is over, it needs no slot again
    await lease.db._take_slot()  # Unavailable if that takes too long: lease stays released
    lease.held = True


# --------------------------------------------------------------------------- column types


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime everywhere (timestamptz on PostgreSQL, DATETIME(6) on MariaDB)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and dialect.name != "postgresql":
            if value.tzinfo is not None:
                value = value.astimezone(UTC)
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Money(TypeDecorator[Decimal]):
    """A fixed-point amount with 2 decimal places; never a float.

    NUMERIC(18, 2) on PostgreSQL and MariaDB. SQLite has no decimal type (NUMERIC there is a
    float), so it stores whole cents in an INTEGER; SQL arithmetic and comparisons on the column
    work the same because parameters go through the same conversion.
    """

    impl = Numeric(18, 2)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(18, 2, asdecimal=True))

    def process_bind_param(self, value: Decimal | int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = Decimal(value).quantize(CENT)
        if dialect.name == "sqlite":
            return int(amount * 100)
        return amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return (Decimal(int(value)) / 100).quantize(CENT)
        return Decimal(value).quantize(CENT)

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal


class utcnow(expression.FunctionElement[dt.datetime]):
    """The database's current UTC time, for server defaults and `updated_at`."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utcnow, "postgresql")
def _utcnow_pg(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


@compiles(utcnow, "mysql")
@compiles(utcnow, "mariadb")
def _utcnow_mysql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


# --------------------------------------------------------------------------- errors

RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available
# deadlock (a lock wait timeout is not retried: the wait already took long; it is a 503)
RETRYABLE_MYSQL_ERRNOS = {1213}


def is_retryable(exc: DBAPIError) -> bool:
    """A failure that a fresh attempt of the same transaction may not meet again."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in RETRYABLE_MYSQL_ERRNOS:
        return True
    return "database is locked" in str(orig)


# PostgreSQL SQLSTATEs that mean "the database cannot serve this now", not a bug:
# a connection exception, or the server shutting down, starting up, crashed, the database dropped,
SERVER_GONE_CLASSES = ("08", "57P")
# a statement timeout (or cancelled statement), too many connections.
SERVER_BUSY_SQLSTATES = frozenset({"57014", "53300"})


def unavailable_sqlstate(sqlstate: str) -> bool:
    """A PostgreSQL error that is a 503 (retry later) whichever way the statement was sent."""
    return sqlstate.startswith(SERVER_GONE_CLASSES) or sqlstate in SERVER_BUSY_SQLSTATES


def _server_gone(exc: BaseException, con: asyncpg.Connection) -> bool:
    """The connection is lost or hung, or the server says it is going away: the other idle
    connections are likely dead too."""
    if con.is_closed() or isinstance(exc, OSError | TimeoutError):
        return True
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    return isinstance(exc, asyncpg.PostgresError) and sqlstate.startswith(SERVER_GONE_CLASSES)


def _server_busy(exc: BaseException) -> bool:
    """A statement timeout or a full server: worth a retry later, not a bug."""
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in SERVER_BUSY_SQLSTATES


# --------------------------------------------------------------------------- engine


def _dialect_of(url: URL) -> str:
    name = url.get_backend_name()
    return "mysql" if name == "mariadb" else name


def _sqlite_in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def engine_options(settings: Settings, url: URL) -> dict[str, Any]:
    """Keyword arguments for `create_async_engine`, per dialect."""
    dialect = _dialect_of(url)
    # hide_parameters: a database error in the log must not carry a password hash
    common: dict[str, Any] = {"hide_parameters": True}
    pool = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.pool_max_overflow,
        "pool_timeout": settings.pool_timeout,
    }
    if dialect == "sqlite":
        options: dict[str, Any] = {
            "connect_args": {"timeout": settings.sqlite_busy_timeout_ms / 1000}
        }
        if not _sqlite_in_memory(url):
            options.update(pool)
        return {**common, **options}
    options = {**common, **pool, "pool_recycle": settings.pool_recycle}
    timeout_ms = settings.statement_timeout_ms
    if dialect == "postgresql":
        server_settings = {"application_name": "asyncblog", "timezone": "UTC"}
        if timeout_ms:
            # statement_timeout also bounds waiting for a row lock held by someone else.
            server_settings["statement_timeout"] = str(timeout_ms)
        options["connect_args"] = {
            "server_settings": server_settings,
            "timeout": settings.db_connect_timeout,
        }
        if timeout_ms:
            # The client's own bound, for when the statement never reaches the server (a hung
            # network): the server's statement_timeout cannot fire then.
            options["connect_args"]["command_timeout"] = timeout_ms / 1000 + 2
    else:
        assignments = ["time_zone = '+00:00'"]
        if timeout_ms:
            assignments.append(f"max_statement_time = {timeout_ms / 1000:.3f}")
            assignments.append(f"innodb_lock_wait_timeout = {max(1, -(-timeout_ms // 1000))}")
        options["connect_args"] = {
            "charset": "utf8mb4",
            "connect_timeout": max(1, round(settings.db_connect_timeout)),
            "init_command": "SET " + ", ".join(f"SESSION {a}" for a in assignments),
        }
        options["isolation_level"] = "READ COMMITTED"
    return options


def create_engine(
    settings: Settings, url: URL | str | None = None, **overrides: Any
) -> AsyncEngine:
    """The process's engine for `url` (default: DATABASE_URL); `overrides` go to SQLAlchemy."""
    url = make_url(url) if url is not None else settings.url
    options = engine_options(settings, url)
    if "poolclass" in overrides:
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key, None)
    options.update(overrides)
    engine = create_async_engine(url, **options)
    if engine.dialect.name == "sqlite":
        _setup_sqlite(engine, settings, in_memory=_sqlite_in_memory(url))
    elif "poolclass" not in overrides:
        _ping_idle_connections(engine, settings.pool_ping_after_idle)
    return engine


def _ping_idle_connections(engine: AsyncEngine, idle_seconds: float) -> None:
    """Pre-ping, but only connections that sat idle in the pool for `idle_seconds` or more.

    SQLAlchemy's `pool_pre_ping` pings on every checkout, and on asyncpg a ping outside a
    transaction is three round trips (BEGIN, `;`, ROLLBACK): more than the query it guards. A
    connection that was in use a moment ago is alive; one that slept may have been cut (a server
    restart, a proxy's idle timeout). A dead one is replaced before the request sees it, and a
    disconnect that still slips through is a 503 and invalidates the pool.
    """
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _setup_sqlite(engine: AsyncEngine, settings: Settings, *, in_memory: bool) -> None:
    busy_ms = int(settings.sqlite_busy_timeout_ms)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (the "begin" hook below) start transactions, not the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """The engine and its session factories.

    `session()` is for reading (on PostgreSQL in autocommit mode: each statement sees committed
    data, with no transaction round trips); `write_session()` is for a unit of work that writes:
    on SQLite it takes the database's write lock when the transaction begins, so two writers
    queue on the busy timeout instead of one failing with "database is locked" halfway through.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.dialect = _dialect_of(engine.url)
        reader = writer = engine
        if self.dialect == "sqlite":
            writer = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        elif self.dialect == "postgresql":
            # asyncpg applies this on the client side: no statement, no round trip.
            reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.session = async_sessionmaker(reader, expire_on_commit=False, autoflush=False)
        self.write_session = async_sessionmaker(writer, expire_on_commit=False, autoflush=False)
        pool = engine.sync_engine.pool
        # As many requests at a time as the pool KEEPS connections: a connection above
        # pool_size ("overflow") is closed when it is returned, so admitting requests beyond
        # pool_size would open and close a connection per request under sustained load. The
        # overflow stays for what is not gated (readiness checks, a CLI command).
        size = pool.size() if isinstance(pool, QueuePool) else 1
        self.pool_timeout = pool._timeout if isinstance(pool, QueuePool) else 30.0
        self._slots = SlotGate(max(size, 1), self.pool_timeout)
        self._size = max(size, 1)
        self._driver: DriverPool | None = None
        if self.dialect == "postgresql":
            self._driver = DriverPool(
                self._driver_connect,
                recycle=settings.pool_recycle if settings else -1,
                ping_after_idle=settings.pool_ping_after_idle if settings else 2.0,
                ping_timeout=settings.db_connect_timeout if settings else 2.0,
            )

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection for one read outside any session, taken in arrival order."""
        async with self.connection_slot(), self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def driver_reader(self) -> AsyncIterator[asyncpg.Connection]:
        """PostgreSQL: an asyncpg connection for single read-only statements, in autocommit,
        taken in arrival order like any other (`connection_slot`).

        It is not one of SQLAlchemy's: for the hottest read, a SQLAlchemy checkout (greenlet
        switches, pool events, the connection wrappers) costs more CPU than the query. It comes
        from a `DriverPool` connected as the engine is (same URL, server settings, timeouts).
        A lost connection, a timeout, a server going away, full or cancelling the statement is
        `Unavailable` (a 503, logged); any other driver error propagates (a bug: the statements
        sent here carry only validated parameters). Either way the connection is not reused.
        Not for use inside a held slot (it would re-enter it: one more connection in use).
        """
        if self._driver is None:
            raise RuntimeError(f"driver_reader is for PostgreSQL, not {self.dialect}")
        async with self.connection_slot():
            pool = self._driver
            try:
                con = await pool.acquire()
            except DRIVER_ERRORS as exc:  # could not connect
                logger.warning("database unavailable: %s", type(exc).__name__, exc_info=exc)
                raise Unavailable(DB_UNAVAILABLE) from exc
            try:
                yield con
            except BaseException as exc:
                gone = _server_gone(exc, con)
                pool.release(con, reusable=False)  # failed or cancelled mid-statement
                if gone:
                    pool.expire()
                if gone or _server_busy(exc):
                    logger.warning("database unavailable: %s", type(exc).__name__, exc_info=exc)
                    raise Unavailable(DB_UNAVAILABLE) from exc
                raise
            pool.release(con)

    async def _driver_connect(self) -> asyncpg.Connection:
        _args, params = self.engine.dialect.create_connect_args(self.engine.url)
        cache_size = params.pop("prepared_statement_cache_size", None)
        if cache_size is not None:  # 0 behind pgbouncer in transaction mode
            params["statement_cache_size"] = int(cache_size)
        params.pop("prepared_statement_name_func", None)
        if self.settings is not None:
            params.update(engine_options(self.settings, self.engine.url)["connect_args"])
        return await asyncpg.connect(**params)

    def connection_slot(self) -> _SlotHold:
        """Wait (at most the pool timeout) for one of the pool's connections, first come first
        served: `async with db.connection_slot(): ...`.

        The pools' own queues let a newcomer take a connection that was just returned while an
        older waiter is still being woken up; under overload a few requests then starve for
        seconds. Gating checkouts with a FIFO `SlotGate` as large as the pool keeps waiting
        times in arrival order. A wait longer than the pool timeout raises Unavailable (a 503
        with Retry-After for the client).

        Re-entrant within a task: a request that holds a slot and needs another connection (the
        optional caller's lookup beside the request's session) does not wait for a second slot,
        which could otherwise deadlock once every slot is held by such a request.
        """
        return _SlotHold(self)

    async def _take_slot(self) -> None:
        try:
            await self._slots.acquire()
        except TimeoutError:
            raise Unavailable(POOL_BUSY, headers={"Retry-After": "1"}) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(create_engine(settings), settings)

    async def dispose(self) -> None:
        try:
            await self.close_driver_pool()
        finally:
            await self.engine.dispose()

    async def close_driver_pool(self) -> None:
        """Close `driver_reader`'s idle connections (one in use is terminated when returned)."""
        if self._driver is not None:
            await self._driver.close()

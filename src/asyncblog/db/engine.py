"""The engine: one per process, with what each database needs to behave.

- SQLite (aiosqlite): WAL journal, foreign keys on, a busy timeout, and transactions begun by us
  (the driver's own implicit BEGIN is switched off) so that savepoints work and a writing unit
  of work takes the write lock up front with ``BEGIN IMMEDIATE``.
- PostgreSQL (asyncpg): pooled connections pinged before use when they were idle (see
  `_ping_idle_connections`), an application name, UTC, a statement timeout (server side, and a
  client-side bound for a hung network); behind PgBouncer in transaction mode (PGBOUNCER=true)
  nothing session-level and no prepared statement kept (`_pgbouncer_connect_args`).
- MariaDB/MySQL (aiomysql): ``pool_recycle`` (the server closes idle ones), utf8mb4, UTC,
  READ COMMITTED, statement and lock-wait timeouts.

A connection goes back to the pool with a rollback only if it is still in a transaction
(`_reset_if_in_transaction`): the data path ends its own transactions, and an unconditional
rollback would cost a thread hop on SQLite and a round trip on MariaDB per request.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_only

from asyncblog.config import Settings, dialect_of

SQLITE_BEGIN_OPTION = "asyncblog_sqlite_begin"


def sqlite_in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def engine_options(settings: Settings, url: URL) -> dict[str, Any]:
    """Keyword arguments for `create_async_engine`, per dialect."""
    dialect = dialect_of(url)
    # hide_parameters: a database error in the log must not carry a password hash
    common: dict[str, Any] = {"hide_parameters": True, "pool_reset_on_return": None}
    pool = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.pool_max_overflow,
        "pool_timeout": settings.pool_timeout,
    }
    if dialect == "sqlite":
        options: dict[str, Any] = {
            "connect_args": {"timeout": settings.sqlite_busy_timeout_ms / 1000}
        }
        if not sqlite_in_memory(url):
            # one connection more than POOL_SIZE: the writers' lane (`db.admission`)
            options.update(pool, pool_size=settings.pool_size + 1)
        return {**common, **options}
    options = {**common, **pool, "pool_recycle": settings.pool_recycle}
    options["connect_args"] = driver_connect_args(settings, url)
    if dialect == "mysql":
        options["isolation_level"] = "READ COMMITTED"
    return options


def driver_connect_args(settings: Settings, url: URL) -> dict[str, Any]:
    """What the driver is given at connect time (server settings, timeouts)."""
    dialect = dialect_of(url)
    timeout_ms = settings.statement_timeout_ms
    if dialect == "postgresql":
        if settings.pgbouncer:
            return _pgbouncer_connect_args(settings)
        server_settings = {"application_name": "asyncblog", "timezone": "UTC"}
        if timeout_ms:
            # statement_timeout also bounds waiting for a row lock held by someone else.
            server_settings["statement_timeout"] = str(timeout_ms)
        args: dict[str, Any] = {
            "server_settings": server_settings,
            "timeout": settings.db_connect_timeout,
        }
        if timeout_ms:
            # The client's own bound, for when the statement never reaches the server (a hung
            # network): the server's statement_timeout cannot fire then.
            args["command_timeout"] = timeout_ms / 1000 + 2
        return args
    if dialect == "mysql":
        assignments = ["time_zone = '+00:00'"]
        if timeout_ms:
            assignments.append(f"max_statement_time = {timeout_ms / 1000:.3f}")
            assignments.append(f"innodb_lock_wait_timeout = {max(1, -(-timeout_ms // 1000))}")
        return {
            "charset": "utf8mb4",
            "connect_timeout": max(1, round(settings.db_connect_timeout)),
            "init_command": "SET " + ", ".join(f"SESSION {a}" for a in assignments),
        }
    return {"timeout": settings.sqlite_busy_timeout_ms / 1000}


def create_engine(
    settings: Settings, url: URL | str | None = None, **overrides: Any
) -> AsyncEngine:
    """The process's engine for `url` (default: DATABASE_URL); `overrides` go to SQLAlchemy."""
    url = make_url(url) if url is not None else settings.url
    options = engine_options(settings, url)
    if "poolclass" in overrides:
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key, None)
    if dialect_of(url) == "mysql":
        options["async_creator"] = _mysql_connect(url, options.pop("connect_args"), settings)
    options.update(overrides)
    engine = create_async_engine(url, **options)
    event.listen(engine.sync_engine.pool, "reset", _reset_if_in_transaction)
    if engine.dialect.name == "sqlite":
        if not sqlite_in_memory(url):
            _create_private(Path(str(url.database)))
        _setup_sqlite(engine, settings, in_memory=sqlite_in_memory(url))
    elif "poolclass" not in overrides:
        _ping_idle_connections(engine, settings.pool_ping_after_idle, settings.db_connect_timeout)
    return engine


def _create_private(path: Path) -> None:
    """Create a new SQLite file readable by its owner only (0600), before SQLite does (it would
    make it 0644 under the usual umask): it holds password hashes and refresh-token digests.
    SQLite gives its -wal and -shm files the database file's permissions. An existing file is
    left as it is."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError:  # a missing directory, a read-only place: SQLite reports it better
        pass


def in_transaction(driver_connection: Any) -> bool:
    """Whether a driver connection (asyncpg, aiosqlite or aiomysql) has a transaction open."""
    probe = getattr(driver_connection, "is_in_transaction", None)  # asyncpg
    if probe is not None:
        return bool(probe())
    probe = getattr(driver_connection, "get_transaction_status", None)  # aiomysql
    if probe is not None:
        return bool(probe())
    return bool(getattr(driver_connection, "in_transaction", True))  # aiosqlite


def _mysql_connect(
    url: URL, connect_args: dict[str, Any], settings: Settings
) -> Callable[[], Awaitable[Any]]:
    """aiomysql's connect, bounded as a whole by DB_CONNECT_TIMEOUT: its own `connect_timeout`
    (whole seconds) bounds opening the socket only, and a server that accepts and never sends
    its greeting (a frozen host) would hang the request that connects."""
    import aiomysql
    from sqlalchemy.dialects.mysql.aiomysql import dialect

    args, kwargs = dialect().create_connect_args(url)
    kwargs.update(connect_args)
    within = settings.db_connect_timeout

    async def connect() -> Any:
        return await asyncio.wait_for(aiomysql.connect(*args, **kwargs), within)

    return connect


def _pgbouncer_connect_args(settings: Settings) -> dict[str, Any]:
    """PostgreSQL behind PgBouncer in transaction mode, where consecutive transactions of one
    connection may run on different server connections.

    - Only the startup parameters PgBouncer tracks for each client (application_name, TimeZone)
      are sent; it refuses the others ("unsupported startup parameter: statement_timeout"), and
      a session-level SET would leak to other clients.
    - The statement timeout is the client's: asyncpg cancels a statement that runs longer
      (through PgBouncer) and the data path drops the connection (a 503, as the server's
      timeout gives). `ALTER ROLE ... SET statement_timeout` adds the server's own bound.
    - No prepared statement outlives its transaction: asyncpg's cache is off (each statement
      is parsed again with its bind, in one message); SQLAlchemy's, for the ORM path, is off
      too and names its statements uniquely (SQLAlchemy's documented recipe).
    """
    args: dict[str, Any] = {
        "server_settings": {"application_name": "asyncblog", "timezone": "UTC"},
        "timeout": settings.db_connect_timeout,
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _statement_name,
    }
    if settings.statement_timeout_ms:
        args["command_timeout"] = settings.statement_timeout_ms / 1000
    return args


async def connection_limit(settings: Settings) -> tuple[int, str] | None:
    """How many connections the database server lets clients like this one open (PostgreSQL:
    max_connections less those reserved for superusers; MariaDB: max_connections), with how
    that was read; None for SQLite and behind PgBouncer (which multiplexes its clients)."""
    dialect = settings.dialect
    if dialect == "sqlite" or settings.pgbouncer:
        return None
    engine = create_engine(settings, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            if dialect == "postgresql":
                total = int(await conn.scalar(text("SHOW max_connections")) or 0)
                reserved = int(await conn.scalar(text("SHOW superuser_reserved_connections")) or 0)
                return total - reserved, f"max_connections {total} - {reserved} reserved"
            total = int(await conn.scalar(text("SELECT @@max_connections")) or 0)
            return total, f"max_connections {total}"
    finally:
        await engine.dispose()


def _statement_name() -> str:
    return f"__asyncblog_{uuid.uuid4().hex}__"


def _reset_if_in_transaction(dbapi_connection: Any, _record: Any, state: Any) -> None:
    """Roll back a connection that comes back with a transaction open (a unit of work cut short);
    one that ended its transaction costs nothing."""
    if state.terminate_only or not in_transaction(dbapi_connection.driver_connection):
        return
    dbapi_connection.rollback()


def _ping_idle_connections(engine: AsyncEngine, idle_seconds: float, within: float) -> None:
    """Pre-ping, but only connections that sat idle in the pool for `idle_seconds` or more.

    SQLAlchemy's `pool_pre_ping` pings on every checkout, and on asyncpg a ping outside a
    transaction is three round trips (BEGIN, `;`, ROLLBACK): more than the query it guards. A
    connection that was in use a moment ago is alive; one that slept may have been cut (a server
    restart, a proxy's idle timeout). A dead one is replaced before the request sees it, and a
    disconnect that still slips through is a 503 and invalidates the pool.
    """
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            _bounded_ping(dbapi_connection, within)
        except Exception as exc:
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc


def _bounded_ping(dbapi_connection: Any, within: float) -> None:
    """`SELECT 1` (aiomysql: its ping) on the driver connection, given up after `within`
    seconds (DB_CONNECT_TIMEOUT): SQLAlchemy's own ping has no bound but the driver's statement
    timeout, none at all with STATEMENT_TIMEOUT_MS=0, and a silently dead connection would hang
    the request that checks it out."""
    driver = dbapi_connection.driver_connection
    fetchval = getattr(driver, "fetchval", None)  # asyncpg
    probe = fetchval("SELECT 1") if fetchval is not None else driver.ping(reconnect=False)
    await_only(asyncio.wait_for(probe, within))


def _setup_sqlite(engine: AsyncEngine, settings: Settings, *, in_memory: bool) -> None:
    busy_ms = int(settings.sqlite_busy_timeout_ms)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (the "begin" hook below) and the data path start transactions, not
        # the driver.
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

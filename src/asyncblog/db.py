"""The async engine, the session factories and what each database needs to behave.

One `Database` per process: created in the app's lifespan (or by a CLI command) and disposed at
the end. Per dialect:

- SQLite (aiosqlite): WAL journal, foreign keys on, a busy timeout, and transactions begun by us
  (the driver's own implicit BEGIN is switched off) so that savepoints work and a writing request
  can take the write lock up front with ``BEGIN IMMEDIATE``.
- PostgreSQL (asyncpg): ``pool_pre_ping``, an application name.
- MariaDB/MySQL (aiomysql): ``pool_recycle`` (the server closes idle connections), utf8mb4,
  READ COMMITTED.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, DateTime, Numeric, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import expression
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator, TypeEngine

from asyncblog.config import Settings

UTC = dt.UTC
CENT = Decimal("0.01")
SQLITE_BEGIN_OPTION = "asyncblog_sqlite_begin"


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


# --------------------------------------------------------------------------- engine


def _dialect_of(url: URL) -> str:
    name = url.get_backend_name()
    return "mysql" if name == "mariadb" else name


def _sqlite_in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def engine_options(settings: Settings, url: URL) -> dict[str, Any]:
    """Keyword arguments for `create_async_engine`, per dialect."""
    dialect = _dialect_of(url)
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
        return options
    options = {**pool, "pool_recycle": settings.pool_recycle}
    if dialect == "postgresql":
        options["pool_pre_ping"] = True
        options["connect_args"] = {"server_settings": {"application_name": "asyncblog"}}
    else:
        options["connect_args"] = {"charset": "utf8mb4"}
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
    return engine


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

    `session()` is for reading; `write_session()` is for a unit of work that writes: on SQLite it
    takes the database's write lock when the transaction begins, so two writers queue on the busy
    timeout instead of one failing with "database is locked" halfway through. Elsewhere the two
    are the same.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = "mysql" if engine.dialect.name == "mariadb" else engine.dialect.name
        self.session = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        if self.dialect == "sqlite":
            writer = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            self.write_session = async_sessionmaker(writer, expire_on_commit=False, autoflush=False)
        else:
            self.write_session = self.session

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(create_engine(settings))

    async def dispose(self) -> None:
        await self.engine.dispose()


SessionFactory = async_sessionmaker[AsyncSession]

"""The one place where driver and database errors become the service's errors.

`translate(exc)` classifies what asyncpg, aiosqlite (sqlite3) and aiomysql (PyMySQL) raise, bare
or wrapped by SQLAlchemy, into:

- `Unavailable` (503): the database cannot serve now: connection refused, lost or timed out,
  the server starting or shutting down, too many connections, a statement or lock wait
  cancelled by the statement timeout, the pool exhausted;
- `Busy` (503, retryable): a deadlock, a serialization failure, SQLite's "database is locked":
  a unit of work may run again from its start;
- `UniqueViolation` (409) with the constraint's name; other integrity failures `Conflict` (409);
- `OutOfRange` (422): a value the column cannot hold;
- None: anything else is a bug and propagates (a 500 with the traceback in the log).

Classification reads the errors' attributes (SQLSTATE, MySQL error number, SQLite's message), so
this module needs none of the drivers imported.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import exc as sa_exc

from asyncblog.errors import (
    DB_UNAVAILABLE,
    Busy,
    Conflict,
    OutOfRange,
    ServiceError,
    TimedOut,
    Unavailable,
    UniqueViolation,
)
from asyncblog.metrics import DB_ERRORS

BUSY = "The database was too busy to complete the request; retry"
CONFLICT = "Conflict with existing data"

# PostgreSQL: serialization failure, deadlock, lock not available.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
# Connection exceptions, server shutting down / starting / crashed / database dropped.
SERVER_GONE_CLASSES = ("08", "57P")
STATEMENT_TIMEOUT = "57014"  # query_canceled: statement_timeout (or lock_timeout)
# A cancelled statement (statement_timeout), too many connections.
SERVER_BUSY_SQLSTATES = frozenset({"57014", "53300"})

# asyncpg's errors for a connection that broke under it (the server closed it between two
# statements: its protocol is left mid-state).
BROKEN_CONNECTION = ("ConnectionDoesNotExistError", "InternalClientError")

# MySQL/MariaDB error numbers.
MYSQL_DEADLOCK = 1213
MYSQL_DUPLICATE = 1062
MYSQL_UNAVAILABLE = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout
        1927,  # connection killed
        1969,  # max_statement_time exceeded (MariaDB)
        3024,  # max_execution_time exceeded (MySQL)
        2002,  # cannot connect (socket)
        2003,  # cannot connect
        2006,  # server has gone away
        2013,  # lost connection during query
        2014,  # commands out of sync (a connection left mid-statement)
        2055,  # lost connection
    }
)
MYSQL_TIMEOUTS = frozenset({1205, 1969, 3024})
MYSQL_OUT_OF_RANGE = frozenset({1264, 1406, 1366, 1292, 3140})

_MARIADB_KEY = re.compile(r"for key '(?:[\w]+\.)?(\w+)'")
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: ([\w.]+)")


def unavailable_sqlstate(sqlstate: str) -> bool:
    """A PostgreSQL error that is a 503 (retry later)."""
    return sqlstate.startswith(SERVER_GONE_CLASSES) or sqlstate in SERVER_BUSY_SQLSTATES


def connection_lost(exc: BaseException) -> bool:
    """The connection the error came from is of no further use (the server went away, the
    network failed or hung): the pool should drop it and probably its idle siblings."""
    orig: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig if isinstance(exc.orig, BaseException) else exc
    if isinstance(orig, OSError | TimeoutError):
        return True
    sqlstate = str(getattr(orig, "sqlstate", "") or "")
    if sqlstate.startswith(SERVER_GONE_CLASSES):
        return True
    if _broken(orig):
        return True
    errno = _mysql_errno(orig)
    return errno is not None and errno in MYSQL_UNAVAILABLE - {1205, 1969, 3024}


def _broken(orig: BaseException) -> bool:
    name = type(orig).__name__
    return name in BROKEN_CONNECTION or (
        name == "InterfaceError" and ("closed" in str(orig) or "does not exist" in str(orig))
    )


def _mysql_errno(orig: BaseException) -> int | None:
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and type(orig).__module__.startswith("pymysql"):
        return args[0]
    return None


def violated_constraint(orig: BaseException) -> str:
    """The unique constraint (or SQLite's `table.column`) that an INSERT or UPDATE broke."""
    for candidate in (orig, getattr(orig, "__cause__", None)):
        name = getattr(candidate, "constraint_name", None)
        if isinstance(name, str):
            return name
    text = str(orig)
    for pattern in (_MARIADB_KEY, _SQLITE_UNIQUE):
        if match := pattern.search(text):
            return str(match.group(1))
    return ""


SCHEMA_MISSING = "The database has no schema yet; run `asyncblog migrate`"

# What a database failure can surface as above this package, untranslated: SQLAlchemy's errors
# (the ORM session of the bulk operations), and what a driver raises while connecting.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sa_exc.SQLAlchemyError, OSError, TimeoutError)


def translate(exc: BaseException) -> ServiceError | None:
    """The service error for a database failure, or None when it is not one (a bug); the
    failures of the database itself counted by kind (`asyncblog_db_errors_total`)."""
    if isinstance(exc, ServiceError):
        return exc
    error = _classify(exc)
    if isinstance(error, Unavailable):
        kind = (
            "busy"
            if isinstance(error, Busy)
            else "timed_out"
            if isinstance(error, TimedOut)
            else "unavailable"
        )
        DB_ERRORS.labels(kind=kind).inc()
    return error


def _classify(exc: BaseException) -> ServiceError | None:
    if isinstance(exc, sa_exc.TimeoutError):  # SQLAlchemy's pool had no connection in time
        return Unavailable(DB_UNAVAILABLE)
    orig: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig if isinstance(exc.orig, BaseException) else exc
        if exc.connection_invalidated or exc.statement is None:  # lost, or failed to connect
            return Unavailable(DB_UNAVAILABLE)
    errno = _mysql_errno(orig)
    if errno is not None:
        if errno == MYSQL_DEADLOCK:
            return Busy(BUSY)
        if errno == 1146:  # no such table
            return Unavailable(SCHEMA_MISSING)
        if errno == MYSQL_DUPLICATE:
            return UniqueViolation(violated_constraint(orig))
        if errno in MYSQL_TIMEOUTS:
            return TimedOut(DB_UNAVAILABLE)
        if errno in MYSQL_UNAVAILABLE or errno >= 2000:  # 2xxx: client-side connection errors
            return Unavailable(DB_UNAVAILABLE)
        if errno in MYSQL_OUT_OF_RANGE:
            return OutOfRange("A value is out of range for the database")
        if type(orig).__name__ == "IntegrityError":
            return Conflict(CONFLICT)
        return None
    # (MySQL errors carry a SQLSTATE too, too coarse: their number is read first)
    # asyncpg, bare or under SQLAlchemy's adapter (which keeps the asyncpg error as __cause__)
    sqlstate = str(getattr(orig, "sqlstate", "") or getattr(orig.__cause__, "sqlstate", "") or "")
    if sqlstate:
        if sqlstate in RETRYABLE_SQLSTATES:
            return Busy(BUSY)
        if sqlstate == STATEMENT_TIMEOUT:
            return TimedOut(DB_UNAVAILABLE)
        if sqlstate == "42P01":  # undefined table
            return Unavailable(SCHEMA_MISSING)
        if unavailable_sqlstate(sqlstate):
            return Unavailable(DB_UNAVAILABLE)
        if sqlstate == "23505":
            return UniqueViolation(violated_constraint(orig))
        if sqlstate.startswith("23"):
            return Conflict(CONFLICT)
        if sqlstate.startswith("22"):
            return OutOfRange("A value is out of range for the database")
        return None
    if isinstance(orig, sqlite3.Error):
        text = str(orig)
        if "database is locked" in text or "database table is locked" in text:
            return Busy(BUSY)
        if "no such table" in text:
            return Unavailable(SCHEMA_MISSING)
        if isinstance(orig, sqlite3.IntegrityError):
            if "UNIQUE constraint failed" in text:
                return UniqueViolation(violated_constraint(orig))
            return Conflict(CONFLICT)
        if isinstance(orig, sqlite3.OperationalError | sqlite3.ProgrammingError) and (
            "closed" in text or "unable to open" in text or "disk I/O" in text
        ):
            return Unavailable(DB_UNAVAILABLE)
        if isinstance(orig, sqlite3.DataError) or "too big" in text:
            return OutOfRange("A value is out of range for the database")
        return None
    if isinstance(orig, TimeoutError):  # the network hung (connecting, or a statement)
        return TimedOut(DB_UNAVAILABLE)
    if isinstance(orig, OSError):  # could not connect
        return Unavailable(DB_UNAVAILABLE)
    if _broken(orig):
        return Unavailable(DB_UNAVAILABLE)
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return Unavailable(DB_UNAVAILABLE)
    return None


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Run a block whose database errors leave it as service errors, the driver's error kept
    as the cause (the API logs an outage with it)."""
    try:
        yield
    except ServiceError:
        raise
    except Exception as exc:
        error = translate(exc)
        if error is None:
            raise
        raise error from exc

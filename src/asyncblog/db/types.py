"""Column types and SQL functions, with no engine or driver behind them.

Models and migrations import only this module (and SQLAlchemy's type system), so defining the
schema never pulls in anything that connects. Each type behaves the same on SQLite, PostgreSQL
and MariaDB:

- `UTCDateTime`: an aware UTC datetime (timestamptz on PostgreSQL, DATETIME(6) on MariaDB, text
  on SQLite); `utcnow()` is the database's current UTC time.
- `Money`: a fixed-point amount with 2 places, never a float (whole cents on SQLite).
- Usernames compare case-insensitively through the column's collation (SQLite NOCASE, an ICU
  nondeterministic collation on PostgreSQL, utf8mb4_general_ci on MariaDB), so the unique
  constraint and a plain `=` agree; client-chosen keys compare byte for byte.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Numeric, String, Text
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import expression
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator, TypeEngine

UTC = dt.UTC
CENT = Decimal("0.01")

MAX_ID = 2_147_483_647  # the id columns are 32-bit integers on every backend
USERNAME_MAX = 50
EMAIL_MAX = 254
TITLE_MAX = 200
CONTENT_MAX = 100_000
PG_CASE_INSENSITIVE = "case_insensitive"  # created by the first migration

UsernameType = (
    String(USERNAME_MAX)
    .with_variant(String(USERNAME_MAX, collation="NOCASE"), "sqlite")
    .with_variant(postgresql.VARCHAR(USERNAME_MAX, collation=PG_CASE_INSENSITIVE), "postgresql")
    .with_variant(mysql.VARCHAR(USERNAME_MAX, collation="utf8mb4_general_ci"), "mysql", "mariadb")
)
EmailType = String(EMAIL_MAX).with_variant(
    mysql.VARCHAR(EMAIL_MAX, collation="utf8mb4_bin"), "mysql", "mariadb"
)
# Client-chosen keys compare byte for byte ("Order-7" is not "order-7").
IdempotencyKeyType = String(255).with_variant(
    mysql.VARCHAR(255, collation="utf8mb4_bin"), "mysql", "mariadb"
)
# MariaDB's TEXT holds 64 KiB; a post may hold 100,000 characters of up to 4 bytes.
ContentType = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


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


class differs(expression.FunctionElement[bool]):
    """`differs(a, b)`: the two texts are not the same byte for byte, whatever the columns'
    collations say (a username's case-insensitive collation calls "Ann" and "ann" equal, but a
    change from one to the other is a change of the row). Both sides are NOT NULL."""

    type = Boolean()
    inherit_cache = True


def _sides(element: differs, compiler: SQLCompiler, **kw: Any) -> tuple[str, str]:
    a, b = element.clauses.clauses
    return compiler.process(a, **kw), compiler.process(b, **kw)


@compiles(differs, "postgresql")
def _differs_pg(element: differs, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _sides(element, compiler, **kw)
    return f'(({a}) COLLATE "C" <> ({b}) COLLATE "C")'


@compiles(differs, "mysql")
@compiles(differs, "mariadb")
def _differs_mysql(element: differs, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _sides(element, compiler, **kw)
    return f"(CAST({a} AS BINARY) <> CAST({b} AS BINARY))"


@compiles(differs, "sqlite")
def _differs_sqlite(element: differs, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _sides(element, compiler, **kw)
    return f"(({a}) <> ({b}) COLLATE BINARY)"

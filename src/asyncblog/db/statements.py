"""Core statements compiled once per dialect, for the data path.

A `Statement` wraps a function that builds a SQLAlchemy Core statement from the models. The first
time it runs on a dialect it is compiled to that driver's SQL text (`$1` for asyncpg, `?` for
aiosqlite, `%s` for aiomysql), with its bound parameters in positional order and the column
types' conversions for parameters and results. After that, running it costs a dict lookup and a
tuple: no compilation, no cache key, no ORM; asyncpg keeps the prepared statement per connection
by its text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator, TypeEngine

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class Compiled:
    sql: str
    names: tuple[str, ...]
    binds: tuple[Processor, ...]
    results: tuple[Processor, ...]
    defaults: Mapping[str, Any]  # values the statement carries itself (a literal LIMIT)
    writes: bool  # an INSERT, UPDATE or DELETE, or a SELECT over one (a data-modifying WITH)
    converts: bool = field(init=False)  # some result column has a conversion
    plain: bool = field(init=False)  # parameters go to the driver as given

    def __post_init__(self) -> None:
        object.__setattr__(self, "converts", any(self.results))
        object.__setattr__(self, "plain", not self.defaults and not any(self.binds))

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        if self.plain:  # the common case, without a generator per statement
            return tuple(map(params.__getitem__, self.names))
        defaults = self.defaults
        return tuple(
            value if process is None or value is None else process(value)
            for value, process in zip(
                (params[n] if n in params else defaults[n] for n in self.names),
                self.binds,
                strict=True,
            )
        )

    def convert(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Rows with each column converted as its type says (SQLite's text times, cents)."""
        if not self.converts:
            return [tuple(row) for row in rows]
        return [
            tuple(
                value if process is None or value is None else process(value)
                for value, process in zip(row, self.results, strict=True)
            )
            for row in rows
        ]


class Statement:
    """`Statement(lambda: select(...))`: built lazily (the models may not be mapped yet at
    import), compiled once per dialect."""

    __slots__ = ("_build", "_built", "_compiled", "name")

    def __init__(self, build: Callable[[], Executable], name: str = "") -> None:
        self._build = build
        self._built: Executable | None = None
        self._compiled: dict[str, Compiled] = {}
        self.name = name

    @property
    def statement(self) -> Executable:
        if self._built is None:
            self._built = self._build()
        return self._built

    def compiled(self, dialect: Dialect) -> Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            found = self._compiled[dialect.name] = _compile(self.statement, dialect)
        return found


def _result_processor(type_: TypeEngine[Any], dialect: Dialect) -> Processor:
    """The type's conversion of a result value. Some drivers' processors need the column's type
    code from a cursor (asyncpg's NUMERIC); the values such a driver returns are native already,
    so only a TypeDecorator's own step is kept then."""
    impl = type_.dialect_impl(dialect)
    try:
        return impl.result_processor(dialect, None)
    except Exception:
        if isinstance(impl, TypeDecorator):
            process = impl.process_result_value
            return lambda value: process(value, dialect)
        return None


def _compile(statement: Executable, dialect: Dialect) -> Compiled:
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    names = tuple(compiled.positiontup or ())
    binds = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    columns = getattr(statement, "exported_columns", ())
    results = tuple(_result_processor(column.type, dialect) for column in columns)
    defaults = {
        name: value
        for name, value in compiled.construct_params(_check=False).items()
        if value is not None
    }
    # Columns with a Python-side scalar default (`default=True`) that the statement leaves out.
    for column, default in [
        *((c, c.default) for c in getattr(compiled, "insert_prefetch", ())),
        *((c, c.onupdate) for c in getattr(compiled, "update_prefetch", ())),
    ]:
        if default is not None and default.is_scalar:
            defaults[column.key] = default.arg
    writes = bool(compiled.isinsert or compiled.isupdate or compiled.isdelete) or any(
        getattr(cte.element, "is_dml", False) for cte in compiled.ctes or ()
    )
    return Compiled(compiled.string, names, binds, results, defaults, writes)

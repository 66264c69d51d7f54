"""Views rendered to JSON text by the database, byte for byte as pydantic renders them.

`json_view(View, {field: column})` is a SQL expression for one view object; `json_list(...)`
aggregates such objects in id order. The keys are the view's fields, values rendered as the
view's serializers do: times in UTC with microseconds and "Z" (`schemas.UTC_FORMAT`), money as
its text, booleans as true/false, nested views as JSON.

- PostgreSQL: `row_to_json` over a one-row sub-select (compact, unlike `json_build_object`), and
  `array_to_json(array_agg(... ORDER BY ...))`.
- SQLite: `json_object` and `json_group_array` (compact already).
- MariaDB is not rendered here: its JSON functions quote nested documents and space their
  output; its views are rendered by pydantic from the same rows (`repositories`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, get_origin

from pydantic import BaseModel
from sqlalchemy import ColumnElement, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import expression
from sqlalchemy.sql.compiler import SQLCompiler

PG_UTC_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'  # = schemas.UTC_FORMAT


class _Unary(expression.FunctionElement[str]):
    type = String()
    inherit_cache = True

    def __init__(self, value: ColumnElement[Any]) -> None:
        super().__init__(value)


class json_time(_Unary):
    """A UTC time as the views render it: 2026-11-25T23:19:34.123000Z."""


class json_money(_Unary):
    """An amount as its text with 2 places: 12.50."""


class json_bool(_Unary):
    """true / false (SQLite keeps booleans as 0 / 1)."""


class json_nested(_Unary):
    """A value that is JSON text already, embedded as JSON (not as a string)."""


class json_text(_Unary):
    """A document handed to the driver as its text (asyncpg under SQLAlchemy would decode a
    `json` value into Python objects, only to have them encoded again)."""


@compiles(json_time, "postgresql")
def _time_pg(element: json_time, compiler: SQLCompiler, **kw: Any) -> str:
    value = compiler.process(element.clauses, **kw)
    return f"to_char({value} AT TIME ZONE 'UTC', '{PG_UTC_FORMAT}')"


@compiles(json_time, "sqlite")
def _time_sqlite(element: json_time, compiler: SQLCompiler, **kw: Any) -> str:
    # Stored as 'YYYY-MM-DD HH:MM:SS[.fff[fff]]' (SQLAlchemy binds 6 digits, the server
    # default 3): the fraction is padded to microseconds.
    v = compiler.process(element.clauses, **kw)
    return (
        f"(substr({v}, 1, 10) || 'T' || substr({v}, 12, 8) || '.' || "
        f"substr(substr({v}, 21) || '000000', 1, 6) || 'Z')"
    )


@compiles(json_money, "postgresql")
def _money_pg(element: json_money, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.clauses, **kw)})::text"


@compiles(json_money, "sqlite")
def _money_sqlite(element: json_money, compiler: SQLCompiler, **kw: Any) -> str:
    v = compiler.process(element.clauses, **kw)  # whole cents, never negative
    return f"printf('%d.%02d', {v} / 100, {v} % 100)"


@compiles(json_bool, "postgresql")
@compiles(json_nested, "postgresql")
def _as_is_pg(element: _Unary, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(json_text, "postgresql")
def _text_pg(element: json_text, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS text)"


@compiles(json_text, "sqlite")
def _text_sqlite(element: json_text, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(json_bool, "sqlite")
def _bool_sqlite(element: json_bool, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json(CASE WHEN {compiler.process(element.clauses, **kw)} THEN 'true' ELSE 'false' END)"


@compiles(json_nested, "sqlite")
def _nested_sqlite(element: json_nested, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json({compiler.process(element.clauses, **kw)})"


class json_object(expression.ColumnElement[str]):
    """One JSON object from (key, SQL value) pairs, keys in the given order."""

    type = String()
    inherit_cache = False

    def __init__(self, pairs: list[tuple[str, ColumnElement[Any]]]) -> None:
        self.pairs = pairs

    def get_children(self, **kw: Any) -> list[ColumnElement[Any]]:
        return [value for _key, value in self.pairs]

    @property
    def _from_objects(self) -> list[Any]:
        return [f for child in self.get_children() for f in child._from_objects]


def _key(key: str) -> str:
    if not key.isidentifier():  # only the views' own field names are rendered as keys
        raise ValueError(f"not a field name: {key!r}")
    return key


@compiles(json_object, "postgresql")
def _object_pg(element: json_object, compiler: SQLCompiler, **kw: Any) -> str:
    columns = ", ".join(
        f'{compiler.process(value, **kw)} AS "{_key(key)}"' for key, value in element.pairs
    )
    return f"(SELECT row_to_json(_o) FROM (SELECT {columns}) AS _o)"  # noqa: S608 (our keys)


@compiles(json_object, "sqlite")
def _object_sqlite(element: json_object, compiler: SQLCompiler, **kw: Any) -> str:
    pairs = ", ".join(
        f"'{_key(key)}', {compiler.process(value, **kw)}" for key, value in element.pairs
    )
    return f"json_object({pairs})"


class json_list(expression.ColumnElement[str]):
    """An aggregate: the JSON array of `item` (a `json_object`) over the rows, in `order_by`
    order; `[]` for no rows. On SQLite the order is the sub-select's (give it an ORDER BY)."""

    type = String()
    inherit_cache = False

    def __init__(self, item: ColumnElement[Any], order_by: ColumnElement[Any]) -> None:
        self.item = item
        self.order_by = order_by

    def get_children(self, **kw: Any) -> list[ColumnElement[Any]]:
        return [self.item, self.order_by]

    @property
    def _from_objects(self) -> list[Any]:
        return [f for child in self.get_children() for f in child._from_objects]


@compiles(json_list, "postgresql")
def _list_pg(element: json_list, compiler: SQLCompiler, **kw: Any) -> str:
    item = compiler.process(element.item, **kw)
    order = compiler.process(element.order_by, **kw)
    return f"COALESCE(array_to_json(array_agg({item} ORDER BY {order})), '[]'::json)"


@compiles(json_list, "sqlite")
def _list_sqlite(element: json_list, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_group_array(json({compiler.process(element.item, **kw)}))"


def json_view(
    view: type[BaseModel],
    columns: Mapping[str, ColumnElement[Any]],
) -> json_object:
    """The JSON object of `view` from these columns (one per field of the view, in its order;
    a field of a list type takes a `json_list` or other JSON text as is)."""
    pairs: list[tuple[str, ColumnElement[Any]]] = []
    for name, field in view.model_fields.items():
        column = columns[name]
        annotation = field.annotation
        value: ColumnElement[Any]
        if annotation is dt.datetime:
            value = json_time(column)
        elif annotation is Decimal:
            value = json_money(column)
        elif annotation is bool:
            value = json_bool(column)
        elif isinstance(column, json_object | json_list) or get_origin(annotation) is list:
            value = json_nested(column)
        else:
            value = column
        pairs.append((name, value))
    return json_object(pairs)

"""Reads and writes whose answer is a view, over the data path (`db.database.Reader`, `Writer`).

Each read is one Core statement, compiled once per dialect. On PostgreSQL and SQLite the
database renders the answer's JSON itself (`db.json`): one round trip (one thread hop on
SQLite), no ORM objects, no second serialization in Python. MariaDB's JSON functions do not
render byte for byte what the views do, so there the same statement selects the view's columns
and pydantic renders them. Either way the answer is the JSON bytes of the response.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.sql import FromClause

from asyncblog.db.database import Reader
from asyncblog.db.json import json_list, json_text, json_view
from asyncblog.db.statements import Statement
from asyncblog.schemas import Versioned

Columns = Mapping[str, ColumnElement[Any]]


def renders_json(link: Reader) -> bool:
    return link.dialect.name != "mysql"


@cache
def _adapter(view: type[BaseModel], many: bool) -> TypeAdapter[Any]:
    return TypeAdapter(list[view] if many else view)  # type: ignore[valid-type]


def dump(view: type[BaseModel], value: Any, *, many: bool = False) -> bytes:
    """pydantic's rendering of `value` (dicts or objects) as `view` (a list with `many`)."""
    adapter = _adapter(view, many)
    return adapter.dump_json(adapter.validate_python(value, from_attributes=True))


def labelled(columns: Columns) -> list[ColumnElement[Any]]:
    return [column.label(name) for name, column in columns.items()]


class ViewQuery:
    """A read of one view (or a list of them) from a select of its columns.

    `build(columns)` returns the select, given how to select a view's columns: on PostgreSQL
    and SQLite one JSON column (`json_view` / `json_list` over a sub-select), on MariaDB the
    plain columns.
    """

    def __init__(
        self,
        view: type[BaseModel],
        source: Callable[[], tuple[Select[Any], Callable[[FromClause], Columns]]],
        *,
        many: bool,
    ) -> None:
        self.view = view
        self.many = many
        self._json = Statement(lambda: self._build(source, as_json=True))
        self._rows = Statement(lambda: self._build(source, as_json=False))

    def _build(
        self,
        source: Callable[[], tuple[Select[Any], Callable[[FromClause], Columns]]],
        *,
        as_json: bool,
    ) -> Select[Any]:
        inner, columns_of = source()
        sub = inner.subquery("v")
        columns = columns_of(sub)
        if not as_json:
            return select(*labelled(columns)).select_from(sub)
        document = json_view(self.view, columns)
        if self.many:
            return select(json_text(json_list(document, sub.c.id))).select_from(sub)
        return select(json_text(document)).select_from(sub)

    async def fetch(self, link: Reader, **params: Any) -> bytes | None:
        """The JSON bytes of the view, or None when a single view finds no row."""
        if renders_json(link):
            text: str | None = await link.value(self._json, **params)
            if text is None:
                return b"[]" if self.many else None
            return text.encode()
        return await self.rendered(link, params)

    async def rendered(self, link: Reader, params: dict[str, Any]) -> bytes | None:
        """MariaDB: the view's columns, rendered by pydantic."""
        rows = await link.rows(self._rows, **params)
        names = list(self.view.model_fields)
        values = [dict(zip(names, row, strict=True)) for row in rows]
        if self.many:
            return dump(self.view, values, many=True)
        return dump(self.view, values[0]) if values else None


def versioned_columns(view: type[BaseModel], table: FromClause, as_json: bool) -> list[Any]:
    """What a statement selects (or returns) for one row's view with its version: the view's
    JSON and the version (PostgreSQL, SQLite), or the view's columns (MariaDB)."""
    if as_json:
        return [json_text(json_view(view, columns_of(view, table))), table.c.version]
    return [table.c[name] for name in view.model_fields]


def versioned(view: type[BaseModel], row: Sequence[Any] | None, as_json: bool) -> Versioned | None:
    """The `Versioned` answer from a row of `versioned_columns` (None: no row)."""
    if row is None:
        return None
    if as_json:
        return Versioned(str(row[0]).encode(), int(row[1]))
    values = dict(zip(view.model_fields, row, strict=True))
    return Versioned(dump(view, values), int(values["version"]))


def columns_of(view: type[BaseModel], table: FromClause, **renamed: str) -> Columns:
    """The view's fields from `table`'s columns of the same name (or as renamed)."""
    return {name: table.c[renamed.get(name, name)] for name in view.model_fields}


def as_dicts(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(names, row, strict=True)) for row in rows]

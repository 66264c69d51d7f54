"""A generic ORM repository, for what is still written with an ORM session (the admin's bulk
operations; the command line's seeding), and `valid_id`.

Repositories never commit: the caller (a service) owns the transaction. Bulk operations are
set-based: one INSERT for many rows (SQLAlchemy's "insertmanyvalues" batches them with RETURNING),
one UPDATE ... WHERE id IN (...), one DELETE ... WHERE id IN (...).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Executable,
    Integer,
    String,
    Table,
    bindparam,
    case,
    func,
    insert,
    or_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from asyncblog.db.types import differs, utcnow
from asyncblog.models import MAX_ID, Base

ModelT = TypeVar("ModelT", bound=Base)


def valid_id(value: int | None) -> bool:
    """Ids are positive 32-bit integers; anything else names no row (and must not reach SQL)."""
    return value is not None and 1 <= value <= MAX_ID


class Repository(Generic[ModelT]):
    model: ClassVar[type[Any]]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _id(self) -> Any:
        return self.model.id

    async def create(self, **values: Any) -> ModelT:
        obj = cast(ModelT, self.model(**values))
        self.session.add(obj)
        await self.session.flush()
        return obj

    async def bulk_create(self, rows: Sequence[Mapping[str, Any]]) -> builtins.list[ModelT]:
        """Insert many rows in set-based statements; returns them in the order given."""
        if not rows:
            return []
        stmt = insert(self.model).returning(self.model, sort_by_parameter_order=True)
        result = await self.session.scalars(stmt, [dict(row) for row in rows])
        return builtins.list(result.all())

    async def bulk_update(self, ids: Iterable[int], values: Mapping[str, Any]) -> int:
        """One UPDATE for all `ids`; returns how many rows matched."""
        return await self._for_ids(
            ids, lambda wanted: update(self.model).where(wanted).values(**values)
        )

    async def _for_ids(
        self, ids: Iterable[int], statement: Callable[[ColumnElement[bool]], Executable]
    ) -> int:
        """Run one statement over the rows with these ids (invalid ids name no row)."""
        wanted = sorted({i for i in ids if valid_id(i)})
        if not wanted:
            return 0
        result = cast(
            CursorResult[Any],
            await self.session.execute(
                statement(self._id.in_(wanted)),
                execution_options={"synchronize_session": False},
            ),
        )
        return int(result.rowcount)


def param(name: str, type_: Any) -> Any:
    """A statement's named parameter with its SQL type (`bindparam`, spelled short)."""
    return bindparam(name, type_=type_)


def version_matches(table: Table) -> ColumnElement[bool]:
    """For a conditional UPDATE: the row has the `expected` version (If-Match), or any version
    when that parameter is NULL. Check and write are then one statement."""
    expected = bindparam("expected", type_=Integer)
    return table.c.version == func.coalesce(expected, table.c.version)


def touched(table: Table, changed: ColumnElement[bool] | None = None) -> dict[str, Any]:
    """What every UPDATE of a row sets besides its change: the time of the change and the next
    version (a write that forgets it would let a stale If-Match through). With `changed`, only
    when it holds: a PATCH to the values the row has already changes nothing.

    Put these first in the SET list (`ordered_values`): MariaDB evaluates assignments left to
    right, each seeing the columns assigned before it, so `changed` must see the old row."""
    if changed is None:
        return {"updated_at": utcnow(), "version": table.c.version + 1}
    return {
        "updated_at": case((changed, utcnow()), else_=table.c.updated_at),
        "version": table.c.version + case((changed, 1), else_=0),
    }


def changes_of(table: Table, params: dict[str, Any]) -> tuple[dict[str, Any], ColumnElement[bool]]:
    """A partial update: `{column: coalesce(:param, column)}` (a NULL parameter keeps the
    column) and whether any column would get another value (texts compared byte for byte)."""
    values = {
        name: func.coalesce(bindparam(name, type_=type_), table.c[name])
        for name, type_ in params.items()
    }
    changed = or_(
        *(
            differs(value, table.c[name])
            if isinstance(table.c[name].type, String)
            else value != table.c[name]
            for name, value in values.items()
        )
    )
    return values, changed

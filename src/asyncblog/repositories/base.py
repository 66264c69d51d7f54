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
    delete,
    insert,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

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

    async def bulk_delete(self, ids: Iterable[int]) -> int:
        """One DELETE for all `ids`; returns how many rows went."""
        return await self._for_ids(ids, lambda wanted: delete(self.model).where(wanted))

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

"""The money ledger and the balance arithmetic on users."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import CursorResult, Table, case, or_, select, update

from asyncblog.db.types import utcnow
from asyncblog.models import Transfer, User
from asyncblog.repositories.base import Repository, valid_id


class TransferRepository(Repository[Transfer]):
    model = Transfer

    async def by_key(self, from_user_id: int, key: str) -> Transfer | None:
        stmt = select(Transfer).where(
            Transfer.from_user_id == from_user_id, Transfer.idempotency_key == key
        )
        return await self.session.scalar(stmt.execution_options(populate_existing=True))

    async def of_user(
        self, user_id: int, *, skip: int, limit: int, after_id: int | None
    ) -> Sequence[Transfer]:
        involved = or_(Transfer.from_user_id == user_id, Transfer.to_user_id == user_id)
        return await self.list(skip=skip, limit=limit, after_id=after_id, where=[involved])

    async def lock_users(self, ids: Sequence[int]) -> dict[int, tuple[Decimal, bool]]:
        """Lock these users' rows in ascending id order (FOR UPDATE; on SQLite the transaction
        already holds the write lock) and return {id: (balance, is_active)}."""
        wanted = sorted({i for i in ids if valid_id(i)})
        stmt = (
            select(User.id, User.balance, User.is_active)
            .where(User.id.in_(wanted))
            .order_by(User.id)
            .with_for_update()
        )
        rows = await self.session.execute(stmt)
        return {row.id: (row.balance, row.is_active) for row in rows}

    async def move(self, from_user_id: int, to_user_id: int, amount: Decimal) -> bool:
        """Debit one user and credit another in ONE statement (both rows are already locked),
        with the arithmetic in SQL. The debit only applies while the balance covers it: anything
        but two changed rows means it did not (and the caller rolls back)."""
        users = cast(Table, User.__table__)  # a Core UPDATE: no ORM bookkeeping for two numbers
        sender = users.c.id == from_user_id
        stmt = (
            update(users)
            .where(users.c.id.in_([from_user_id, to_user_id]))
            .where(or_(~sender, users.c.balance >= amount))
            .values(
                balance=case((sender, users.c.balance - amount), else_=users.c.balance + amount),
                updated_at=utcnow(),
            )
        )
        result = cast(CursorResult[Any], await self.session.execute(stmt))
        return bool(result.rowcount == 2)

    async def credit(self, user_id: int, amount: Decimal) -> bool:
        """balance += amount in SQL (never read-modify-write in Python). Returns whether the
        user exists."""
        if not valid_id(user_id):
            return False
        stmt = update(User).where(User.id == user_id).values(balance=User.balance + amount)
        result = cast(
            CursorResult[Any],
            await self.session.execute(stmt, execution_options={"synchronize_session": False}),
        )
        return bool(result.rowcount == 1)

"""A Reader runs no statement that writes (it may be a replica's link, or outside the write's
transaction): an INSERT, an UPDATE, or a SELECT over a data-modifying WITH through a Reader is a
TypeError before anything reaches the database; through a Writer each runs."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, literal, select, update

from asyncblog.api.state import AppState
from asyncblog.db.statements import Statement
from asyncblog.models import User

_NEW = Statement(
    lambda: (
        insert(User)
        .values(username="linked", email="linked@example.com", hashed_password="x")
        .returning(User.id)
    )
)
_RENAME = Statement(lambda: update(User).where(User.username == "linked").values(is_admin=True))
_COUNT = Statement(lambda: select(func.count()).select_from(User))


def _with_a_write() -> Statement:
    moved = update(User).values(is_admin=False).returning(User.id).cte("moved")
    return Statement(lambda: select(func.count()).select_from(moved))


async def test_a_reader_refuses_a_statement_that_writes(state: AppState) -> None:
    db = state.db
    async with db.reader() as link:
        with pytest.raises(TypeError, match="writes went through a Reader"):
            await link.value(_NEW)
        with pytest.raises(TypeError, match="writes went through a Reader"):
            await link.rows(_RENAME)
        assert await link.value(_COUNT) == 0  # nothing reached the database
    async with db.writer() as link:
        assert await link.value(_NEW) is not None
        assert await link.count(_RENAME) == 1
        assert await link.value(_COUNT) == 1
    if db.dialect == "postgresql":  # data-modifying WITH: PostgreSQL's alone
        with_a_write = _with_a_write()
        async with db.reader() as link:
            with pytest.raises(TypeError, match="writes went through a Reader"):
                await link.value(with_a_write)
        async with db.writer() as link:
            assert await link.value(with_a_write) == 1
    async with db.reader() as link:  # a plain SELECT is what a Reader is for
        assert await link.value(Statement(lambda: select(literal(1)))) == 1

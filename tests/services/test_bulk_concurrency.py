"""The admin's bulk import racing another registration, forced (live, every backend).

Another transaction inserts a username of the batch without committing: the import's conflict
check does not see it, and its INSERT then waits for that transaction (PostgreSQL and MariaDB:
on the unique index). When it commits, the INSERT breaks the unique constraint inside the ORM
session: with `abort` everything the session wrote is rolled back and the answer is a 409 naming
the row; with `skip` each row goes in on its own savepoint and only that row is skipped. (SQLite
has one writer: the import waits for the other transaction and then finds the username with its
check; the same answers.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from asyncblog.models import User
from tests.fixtures.app import Api
from tests.fixtures.databases import Backend
from tests.fixtures.faults import waits_for_another_transaction

pytestmark = pytest.mark.concurrency


def entry(name: str) -> dict[str, str]:
    return {"username": name, "email": f"{name}@example.com", "password": "password123"}


async def usernames(api: Api, *names: str) -> set[str]:
    async with api.state.db.session() as session:
        found = await session.scalars(select(User.username).where(User.username.in_(names)))
        return set(found)


@pytest.mark.parametrize("on_conflict", ["abort", "skip"])
async def test_a_username_taken_while_the_import_runs(
    live_api: Api, backend: Backend, on_conflict: str
) -> None:
    _, admin = await live_api.admin()
    batch = [entry("race_a"), entry("race_taken"), entry("race_b")]
    async with backend.engine.connect() as other:
        await other.begin()
        await other.execute(
            insert(User).values(
                username="race_taken",
                email="someone.else@example.com",
                hashed_password="x",
            )
        )
        sent = asyncio.create_task(
            live_api.client.post(
                "/users/bulk", json={"users": batch, "on_conflict": on_conflict}, headers=admin
            )
        )
        if backend.name != "sqlite":  # SQLite: it waits for the write lock; nothing to see
            await waits_for_another_transaction(backend, live_api.state, sent)
        await other.commit()
    response = await asyncio.wait_for(sent, 30)

    body: dict[str, Any] = response.json()
    if on_conflict == "abort":
        assert response.status_code == 409, response.text
        assert body["conflicts"] == [1]
        assert await usernames(live_api, "race_a", "race_b") == set()  # nothing of it stays
    else:
        assert response.status_code == 201, response.text
        assert body["skipped"] == [1]
        assert [u["username"] for u in body["created"]] == ["race_a", "race_b"]
        assert await usernames(live_api, "race_a", "race_b") == {"race_a", "race_b"}
    async with live_api.state.db.session() as session:
        taken = await session.scalar(
            select(func.count()).select_from(User).where(User.username == "race_taken")
        )
    assert taken == 1

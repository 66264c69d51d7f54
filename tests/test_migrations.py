"""Alembic migrations on every backend: up, down to base, up again, one step down and back, and
a schema that matches the models (what the database itself enforces, not just what the ORM does).

Each test gets a database of its own (not the session's shared one), so migrations can be run
back and forth freely.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.pool import NullPool

from asyncblog import migrations
from asyncblog.db.engine import create_engine
from asyncblog.models import Base, Post, User
from tests.fixtures.databases import BACKENDS, drop_database, new_database, settings_for

APP_TABLES = {"users", "posts", "transfers"}


@pytest.fixture(params=BACKENDS)
async def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[URL]:
    """A brand-new, empty database of each kind; dropped afterwards."""
    name: str = request.param
    url = await new_database(name, tmp_path)
    try:
        yield url
    finally:
        await drop_database(name, url)


@pytest.fixture
async def migrated_db(empty_db: URL) -> URL:
    await upgrade(empty_db)
    return empty_db


# ---------------------------------------------------------------------------- helpers


async def upgrade(url: URL, revision: str = "head") -> None:
    await asyncio.to_thread(migrations.upgrade, url, revision)


async def downgrade(url: URL, revision: str) -> None:
    await asyncio.to_thread(migrations.downgrade, url, revision)


@asynccontextmanager
async def engine_for(url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings_for(url), url, poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


async def table_names(url: URL) -> set[str]:
    async with engine_for(url) as engine, engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def column_names(url: URL, table: str) -> set[str]:
    async with engine_for(url) as engine, engine.connect() as conn:
        columns = await conn.run_sync(lambda c: inspect(c).get_columns(table))
        return {column["name"] for column in columns}


async def version_rows(url: URL) -> list[str]:
    async with engine_for(url) as engine, engine.connect() as conn:
        return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


def head_revision() -> str:
    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    assert head is not None
    return head


def _is_false_positive(dialect: str, diff: tuple[Any, ...]) -> bool:
    """Differences autogenerate reports that are only a matter of spelling, filtered narrowly.

    - SQLite, users.balance: the migration adds the column with raw `ALTER TABLE ... INTEGER`
      (SQLite can add a column with its CHECK in place that way); the model's Money type renders
      BIGINT on SQLite. Both are the same 64-bit INTEGER-affinity storage in SQLite.
    - MariaDB, server defaults of users.is_active / is_admin / balance and refresh_tokens.spent:
      MariaDB reflects them as the literals '1', '0', '0.00', '0' where the model says true(),
      false(), '0' and false(). Only
      defaults whose value is the same are skipped; a changed value still fails.
    """
    kind = diff[0]
    if dialect == "sqlite" and kind == "modify_type":
        _, _, table, column, _, reflected, model = diff
        return (
            (table, column) == ("users", "balance")
            and reflected.__class__.__name__ == "INTEGER"
            and model.__class__.__name__ == "Money"
        )
    if dialect in ("mysql", "mariadb") and kind == "modify_default":
        _, _, table, column, _, reflected, model = diff
        reflected_text = str(getattr(reflected.arg, "text", reflected.arg)).strip("'")
        expected = {
            ("users", "is_active"): "1",
            ("users", "is_admin"): "0",
            ("refresh_tokens", "spent"): "0",
        }.get((table, column))
        if expected is not None:
            return reflected_text == expected
        if (table, column) == ("users", "balance"):
            return Decimal(reflected_text) == Decimal(str(model.arg)) == 0
    return False


async def schema_differences(url: URL) -> list[Any]:
    """What alembic's autogenerate would change to make the database match the models."""

    def compare(sync_conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            sync_conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diffs: list[Any] = list(compare_metadata(context, Base.metadata))
        dialect = sync_conn.dialect.name
        flat: list[Any] = []
        for diff in diffs:
            # Column modifications come as a list of one or more tuples.
            items = diff if isinstance(diff, list) else [diff]
            flat += [item for item in items if not _is_false_positive(dialect, item)]
        return flat

    async with engine_for(url) as engine, engine.connect() as conn:
        return await conn.run_sync(compare)


async def insert_user(engine: AsyncEngine, username: str, email: str | None = None) -> int:
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (username, email, hashed_password) VALUES (:u, :e, 'x')"),
            {"u": username, "e": email or f"{username.lower()}@example.com"},
        )
        user_id = await conn.scalar(
            text("SELECT id FROM users WHERE email = :e"),
            {"e": email or f"{username.lower()}@example.com"},
        )
    assert isinstance(user_id, int)
    return user_id


async def insert_post(engine: AsyncEngine, author_id: int, title: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO posts (title, content, author_id) VALUES (:t, 'body', :a)"),
            {"t": title, "a": author_id},
        )


async def post_titles(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT title FROM posts ORDER BY id"))).scalars())


# ---------------------------------------------------------------------------- up and down


async def test_upgrade_downgrade_upgrade(empty_db: URL) -> None:
    assert not (await table_names(empty_db)) & APP_TABLES

    await upgrade(empty_db)
    assert {*APP_TABLES, "alembic_version"} <= await table_names(empty_db)
    assert await version_rows(empty_db) == [head_revision()]

    await downgrade(empty_db, "base")
    remaining = await table_names(empty_db)
    assert not remaining & APP_TABLES, remaining
    assert remaining <= {"alembic_version"}, remaining
    if "alembic_version" in remaining:
        assert await version_rows(empty_db) == []

    await upgrade(empty_db)
    assert {*APP_TABLES, "alembic_version"} <= await table_names(empty_db)
    assert await version_rows(empty_db) == [head_revision()]
    assert await schema_differences(empty_db) == []

    # The re-created schema works through the ORM, defaults included.
    async with engine_for(empty_db) as engine:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as session:
            user = User(username="Again", email="again@example.com", hashed_password="x")
            session.add(user)
            await session.flush()
            session.add(Post(title="Back", content="after a round trip", author_id=user.id))
            await session.commit()
        async with sessions() as session:
            loaded = await session.scalar(select(User).where(User.username == "again"))
            assert loaded is not None
            assert loaded.id == user.id
            assert loaded.balance == Decimal("0.00")
            assert loaded.is_active is True
            assert loaded.is_admin is False
            assert loaded.created_at.tzinfo is not None
            posts = list(await session.scalars(select(Post).where(Post.author_id == user.id)))
            assert [p.title for p in posts] == ["Back"]


async def test_upgrade_twice_is_a_no_op(migrated_db: URL) -> None:
    async with engine_for(migrated_db) as engine:
        await insert_user(engine, "Keeper")
    await upgrade(migrated_db)
    assert await version_rows(migrated_db) == [head_revision()]
    async with engine_for(migrated_db) as engine, engine.connect() as conn:
        assert (await conn.execute(text("SELECT username FROM users"))).scalars().all() == [
            "Keeper"
        ]


async def test_schema_matches_the_models(migrated_db: URL) -> None:
    assert await schema_differences(migrated_db) == []


async def test_one_step_down_and_back_keeps_rows_and_constraints(migrated_db: URL) -> None:
    """Going down to 0001 removes the money (on SQLite by copying `users`) without touching the
    users, their posts, or what the users table enforces; going back up restores the schema."""
    async with engine_for(migrated_db) as engine:
        user_id = await insert_user(engine, "Carol")
        await insert_post(engine, user_id, "survives")

    await downgrade(migrated_db, "0001")
    assert await version_rows(migrated_db) == ["0001"]
    tables = await table_names(migrated_db)
    assert {"users", "posts"} <= tables
    assert "transfers" not in tables
    assert "balance" not in await column_names(migrated_db, "users")

    async with engine_for(migrated_db) as engine:
        assert await post_titles(engine) == ["survives"]
        with pytest.raises(IntegrityError):
            await insert_user(engine, "CAROL", "other-carol@example.com")
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": user_id})
        assert await post_titles(engine) == []  # the cascade survived the table copy
        user_id = await insert_user(engine, "Dan")
        await insert_post(engine, user_id, "written at 0001")

    await upgrade(migrated_db)
    assert await schema_differences(migrated_db) == []
    async with engine_for(migrated_db) as engine, engine.connect() as conn:
        balance = await conn.scalar(
            select(User.balance).where(User.id == user_id)  # through the Money type
        )
        assert balance == Decimal("0.00")
        assert await post_titles(engine) == ["written at 0001"]


async def test_versions_come_to_rows_that_exist_and_go_back(empty_db: URL) -> None:
    """0004 on a database holding data: every existing user and post gets version 1; going
    back removes the columns and keeps the rows."""
    await upgrade(empty_db, "0003")
    async with engine_for(empty_db) as engine:
        user_id = await insert_user(engine, "Olga")
        await insert_post(engine, user_id, "older than versions")

    await upgrade(empty_db, "0004")
    async with engine_for(empty_db) as engine, engine.connect() as conn:
        for table in ("users", "posts"):
            versions = (await conn.execute(text(f"SELECT version FROM {table}"))).scalars().all()
            assert versions == [1], table
    async with engine_for(empty_db) as engine:  # a new row starts at 1 too
        assert await insert_user(engine, "Pavel") > user_id
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT MAX(version) FROM users")) == 1

    await downgrade(empty_db, "0003")
    for table in ("users", "posts"):
        assert "version" not in await column_names(empty_db, table)
    async with engine_for(empty_db) as engine:
        assert await post_titles(engine) == ["older than versions"]
    await upgrade(empty_db)
    assert await schema_differences(empty_db) == []


async def test_sessions_come_to_a_database_holding_data_and_go_back(empty_db: URL) -> None:
    """0005 on a database with rows in every table: users get token version 1, the refresh
    tokens' table appears empty; going back removes both and keeps every row."""
    await upgrade(empty_db, "0004")
    async with engine_for(empty_db) as engine:
        user_id = await insert_user(engine, "Quinn")
        await insert_post(engine, user_id, "before sessions")
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO transfers (to_user_id, amount) VALUES (:u, 5)"), {"u": user_id}
            )

    await upgrade(empty_db, "0005")
    async with engine_for(empty_db) as engine, engine.connect() as conn:
        assert (await conn.execute(text("SELECT token_version FROM users"))).scalars().all() == [1]
        assert await conn.scalar(text("SELECT COUNT(*) FROM refresh_tokens")) == 0

    await downgrade(empty_db, "0004")
    assert "refresh_tokens" not in await table_names(empty_db)
    assert "token_version" not in await column_names(empty_db, "users")
    async with engine_for(empty_db) as engine, engine.connect() as conn:
        assert await post_titles(engine) == ["before sessions"]
        assert await conn.scalar(text("SELECT COUNT(*) FROM transfers")) == 1
    await upgrade(empty_db)
    assert await schema_differences(empty_db) == []


async def test_ids_stay_unique_over_time_after_0005(empty_db: URL) -> None:
    """0005 rebuilds users and posts on SQLite (AUTOINCREMENT) with their rows; on every backend
    the newest user's id, once deleted, is not given again."""
    await upgrade(empty_db, "0004")
    async with engine_for(empty_db) as engine:
        kept = await insert_user(engine, "Rosa")
        await insert_post(engine, kept, "kept through the rebuild")
        newest = await insert_user(engine, "Sam")
    await upgrade(empty_db)
    async with engine_for(empty_db) as engine:
        assert await post_titles(engine) == ["kept through the rebuild"]
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": newest})
        assert await insert_user(engine, "Tom") > newest
        with pytest.raises(IntegrityError):  # the case-insensitive username survived
            await insert_user(engine, "ROSA", "rosa2@example.com")
    assert await schema_differences(empty_db) == []
    await downgrade(empty_db, "0004")
    async with engine_for(empty_db) as engine:
        assert await post_titles(engine) == ["kept through the rebuild"]


# ---------------------------------------------------------------------------- constraints


async def test_username_unique_case_insensitively_in_the_database(migrated_db: URL) -> None:
    async with engine_for(migrated_db) as engine:
        await insert_user(engine, "Dave", "dave1@example.com")
        with pytest.raises(IntegrityError):
            await insert_user(engine, "dave", "dave2@example.com")
        with pytest.raises(IntegrityError):
            await insert_user(engine, "DAVE", "dave3@example.com")
        await insert_user(engine, "Dave2", "dave4@example.com")  # a different name is fine
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM users")) == 2
            # A plain `=` agrees with the unique constraint.
            found = await conn.scalar(
                text("SELECT username FROM users WHERE username = :u"), {"u": "dAVE"}
            )
            assert found == "Dave"


async def test_email_unique_in_the_database(migrated_db: URL) -> None:
    async with engine_for(migrated_db) as engine:
        await insert_user(engine, "erin", "erin@example.com")
        with pytest.raises(IntegrityError):
            await insert_user(engine, "erin2", "erin@example.com")


async def test_posts_cascade_when_a_user_row_is_deleted(migrated_db: URL) -> None:
    async with engine_for(migrated_db) as engine:
        doomed = await insert_user(engine, "doomed")
        kept = await insert_user(engine, "kept")
        await insert_post(engine, doomed, "d1")
        await insert_post(engine, kept, "k1")
        await insert_post(engine, doomed, "d2")

        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": doomed})

        assert await post_titles(engine) == ["k1"]


async def test_a_post_needs_an_existing_author(migrated_db: URL) -> None:
    async with engine_for(migrated_db) as engine:
        with pytest.raises(IntegrityError):
            await insert_post(engine, 424242, "orphan")
        assert await post_titles(engine) == []


async def test_balance_cannot_go_negative_in_the_database(migrated_db: URL) -> None:
    async with engine_for(migrated_db) as engine:
        user_id = await insert_user(engine, "frank")
        with pytest.raises(DBAPIError) as refused:
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE users SET balance = -1 WHERE id = :id"), {"id": user_id}
                )
        if engine.dialect.name in ("mysql", "mariadb"):
            # MariaDB reports a failed CHECK as error 4025, which its driver maps to an
            # OperationalError rather than an IntegrityError.
            assert refused.value.orig is not None
            assert refused.value.orig.args[0] == 4025, refused.value
        else:
            assert isinstance(refused.value, IntegrityError), refused.value
        async with engine.connect() as conn:
            assert await conn.scalar(select(User.balance).where(User.id == user_id)) == 0

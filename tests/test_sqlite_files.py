"""A new SQLite database is private to its owner, and so are the `-wal` and `-shm` files that
SQLite keeps next to it while the service holds it open (WAL mode). `test_cli.py` checks the
file after `migrate` has exited, when SQLite has already removed the other two."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from asyncblog import migrations
from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from tests.fixtures.app import Api
from tests.fixtures.databases import settings_for


def modes_in(directory: Path) -> dict[str, str]:
    return {p.name: oct(p.stat().st_mode & 0o777) for p in directory.iterdir()}


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The usual umask (022), under which SQLite alone would create 0644 files: with a stricter
    one the modes would be 0600 whatever the service did."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("usual_umask")
async def test_the_wal_and_shm_files_are_0600_while_the_service_holds_the_database(
    tmp_path: Path,
) -> None:
    """A new SQLite file, migrated, then opened by the app (the engine `serve` builds) and
    written to through the API: while the app holds it open, the database, its `-wal` and its
    `-shm` are all readable by their owner only (SQLite gives the two the database file's
    mode; the service creates that file 0600 before SQLite opens it)."""
    database = tmp_path / "blog.db"
    url = f"sqlite+aiosqlite:///{database}"
    await asyncio.to_thread(migrations.upgrade, url)
    state = AppState.build(settings_for(url))
    transport = httpx.ASGITransport(app=create_app(state=state))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await Api(client, state).register()  # a write: the WAL is in use
            modes = modes_in(tmp_path)
            for name in ("blog.db", "blog.db-wal", "blog.db-shm"):
                assert modes.get(name) == "0o600", modes
    finally:
        await state.db.dispose()

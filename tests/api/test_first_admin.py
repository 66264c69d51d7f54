"""FIRST_ADMIN_USERNAME / _EMAIL / _PASSWORD: the admin is created at start-up if absent.

The app is started as `serve` starts it: `create_app(settings)`, owning its database (its own
engine, made in the lifespan), on the session's migrated database of each backend, with real
commits; the tables are emptied afterwards.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from asyncblog.api.app import create_app
from asyncblog.config import Settings
from tests.fixtures.app import client_of, empty_tables
from tests.fixtures.databases import Backend, settings_for

ADMIN = {"username": "rootadmin", "email": "root@example.com", "password": "first-admin-pass"}


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run (start-up on entry, shutdown at the end), and a client."""
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app), client_of(app) as client:
            yield client
    finally:
        gc.unfreeze()  # an app that owns its database freezes what exists after start-up


async def admins_named(backend: Backend, username: str) -> list[dict[str, Any]]:
    async with backend.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT is_admin, is_active FROM users WHERE username = :name"),
            {"name": username},
        )
        return [dict(row._mapping) for row in rows]


@pytest.fixture
async def emptied(backend: Backend) -> AsyncIterator[Backend]:
    """The backend, its tables emptied after the test (the app commits for real)."""
    try:
        yield backend
    finally:
        await empty_tables(backend.engine)


async def test_the_first_admin_is_created_at_start_up_once(
    emptied: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """On a database without it, the start-up creates the admin (admin, active) and it logs
    in with that password; a second start leaves exactly that one user, with no error or
    warning logged."""
    backend = emptied
    assert await admins_named(backend, ADMIN["username"]) == []
    settings = settings_for(
        backend.url,
        first_admin_username=ADMIN["username"],
        first_admin_email=ADMIN["email"],
        first_admin_password=ADMIN["password"],
    )
    caplog.set_level(logging.INFO, logger="asyncblog")
    for _start in range(2):
        async with started(settings) as client:
            form = {"username": ADMIN["username"], "password": ADMIN["password"]}
            token = await client.post("/auth/token", data=form)
            assert token.status_code == 200, token.text
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            me = await client.get("/users/me", headers=headers)
            assert me.status_code == 200, me.text
            assert (me.json()["is_admin"], me.json()["is_active"]) == (True, True)
    assert await admins_named(backend, ADMIN["username"]) == [{"is_admin": True, "is_active": True}]
    created = [r for r in caplog.records if r.getMessage() == "created the first admin"]
    assert len(created) == 1, "created at the first start only"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_an_invalid_first_admin_is_an_error_line_and_the_app_starts(
    emptied: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A value the user rules refuse (a 3-character password): an ERROR line naming the field,
    not the password; no user is created, and the app starts and answers."""
    backend = emptied
    settings = settings_for(
        backend.url,
        first_admin_username=ADMIN["username"],
        first_admin_email=ADMIN["email"],
        first_admin_password="abc",
    )
    caplog.set_level(logging.INFO, logger="asyncblog")
    async with started(settings) as client:
        assert (await client.get("/users/count")).status_code == 200
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "asyncblog"]
    assert len(errors) == 1, caplog.text
    assert "FIRST_ADMIN_*" in errors[0].getMessage()
    assert "password" in errors[0].getMessage()
    assert "abc" not in errors[0].getMessage()
    assert await admins_named(backend, ADMIN["username"]) == []

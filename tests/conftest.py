"""Test fixtures: every test runs on SQLite, PostgreSQL and MariaDB.

- `backend` (session scope, parametrised): a fresh database per backend per run, migrated once
  with Alembic, dropped at the end. A backend that cannot be reached is skipped with the reason
  on a laptop and fails the run when CI=true.
- `client` / `api`: the ASGI app on a connection whose outer transaction is rolled back after the
  test; the app's sessions join it with savepoints, so each test starts from an empty database.
- `live_client` / `live_api`: the app on the real engine (a pool, real commits) for concurrency
  tests; the tables are emptied afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker

from asyncblog import migrations
from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.config import Settings
from asyncblog.db.database import Database
from asyncblog.db.engine import create_engine

BACKENDS = ("sqlite", "postgresql", "mariadb")
PG_ADMIN = os.environ.get("TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
MARIADB_ADMIN = os.environ.get("TEST_MARIADB_URL", "mysql+aiomysql://root@127.0.0.1:3306/")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

TABLES = ("transfers", "posts", "users")


def settings_for(url: URL | str, **overrides: Any) -> Settings:
    """Settings for tests: cheap Argon2 (the cost is a setting, the algorithm is the same)."""
    values: dict[str, Any] = {
        "database_url": url.render_as_string(hide_password=False) if isinstance(url, URL) else url,
        "secret_key": "test-secret-key-that-is-long-enough-for-hs256",
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 1024,
        "argon2_parallelism": 1,
        "access_log": False,
        "pool_size": 20,
        "pool_max_overflow": 20,
    }
    values.update(overrides)
    return Settings(**values)


def unavailable(name: str, why: BaseException | str) -> None:
    message = f"{name} is not reachable ({why}); its tests cannot run"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(f"SKIPPED BACKEND: {message}")


# ---------------------------------------------------------------------------- databases


async def _create_server_database(backend: str, name: str) -> URL:
    admin_url = make_url(PG_ADMIN if backend == "postgresql" else MARIADB_ADMIN)
    admin = create_engine(settings_for(admin_url), admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {name}"))
    finally:
        await admin.dispose()
    return admin_url.set(database=name)


async def _drop_server_database(backend: str, name: str) -> None:
    admin_url = make_url(PG_ADMIN if backend == "postgresql" else MARIADB_ADMIN)
    admin = create_engine(settings_for(admin_url), admin_url, isolation_level="AUTOCOMMIT")
    force = " WITH (FORCE)" if backend == "postgresql" else ""
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
    finally:
        await admin.dispose()


@dataclass
class Backend:
    name: str
    url: URL
    settings: Settings
    engine: AsyncEngine

    @property
    def dialect(self) -> str:
        return "mysql" if self.name == "mariadb" else self.name


async def new_database(backend: str, tmp: Path) -> URL:
    """An empty database of this kind; skips or fails (CI) when the server is unreachable."""
    if backend == "sqlite":
        return make_url(f"sqlite+aiosqlite:///{tmp / f'test-{uuid.uuid4().hex[:8]}.db'}")
    name = f"asyncblog_test_{uuid.uuid4().hex[:10]}"
    try:
        return await asyncio.wait_for(_create_server_database(backend, name), 15)
    except Exception as exc:  # connection refused, auth, timeout
        unavailable(backend, f"{type(exc).__name__}: {exc}")
        raise


async def drop_database(backend: str, url: URL) -> None:
    if backend != "sqlite" and url.database:
        await _drop_server_database(backend, url.database)


@pytest.fixture(scope="session", params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Backend]:
    name: str = request.param
    url = await new_database(name, tmp_path_factory.mktemp(name))
    try:
        await asyncio.to_thread(migrations.upgrade, url)
        settings = settings_for(url)
        engine = create_engine(settings, url)
        try:
            yield Backend(name, url, settings, engine)
        finally:
            await engine.dispose()
    finally:
        await drop_database(name, url)


# ---------------------------------------------------------------------------- isolated app


@pytest.fixture
async def connection(backend: Backend) -> AsyncIterator[AsyncConnection]:
    async with backend.engine.connect() as conn:
        outer = await conn.begin()
        await conn.execute(text("SELECT 1"))  # the drivers begin lazily: begin now
        try:
            yield conn
        finally:
            await outer.rollback()


@pytest.fixture
def state(backend: Backend, connection: AsyncConnection) -> AppState:
    """App state whose sessions all join the test's outer transaction (as savepoints)."""
    db = Database(backend.engine)
    joined = async_sessionmaker(
        bind=connection,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="create_savepoint",
    )
    db.session = db.write_session = joined

    async def checkout() -> tuple[Any, Callable[[BaseException | None], Awaitable[None]]]:
        # The data path's units run on the test's connection, as savepoints of its outer
        # transaction (`Link` sees the open transaction).
        raw = await connection.get_raw_connection()

        async def give_back(_failure: BaseException | None) -> None:
            return None

        return raw.driver_connection, give_back

    db.checkout = checkout
    return AppState.build(backend.settings, db)


async def _client(state: AppState) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(state=state)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
async def client(state: AppState) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(state):
        yield c


class Api:
    """Small helpers over the HTTP API, so tests read as what they check."""

    def __init__(self, client: httpx.AsyncClient, state: AppState) -> None:
        self.client = client
        self.state = state
        self._n = 0

    def unique(self, prefix: str = "user") -> str:
        self._n += 1
        return f"{prefix}{self._n}_{uuid.uuid4().hex[:6]}"

    async def register(
        self, username: str | None = None, password: str = "password123", **extra: Any
    ) -> dict[str, Any]:
        username = username or self.unique()
        body = {"username": username, "email": f"{username}@example.com", "password": password}
        body.update(extra)
        response = await self.client.post("/users", json=body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    async def login(self, username: str, password: str = "password123") -> dict[str, str]:
        response = await self.client.post(
            "/auth/token", data={"username": username, "password": password}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def user(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """A registered user and its auth headers."""
        user = await self.register(**kwargs)
        return user, await self.login(user["username"], kwargs.get("password", "password123"))

    async def admin(self) -> tuple[dict[str, Any], dict[str, str]]:
        user = await self.register()
        async with self.state.db.write_session() as session:
            await session.execute(
                text("UPDATE users SET is_admin = :yes WHERE id = :id"),
                {"yes": True, "id": user["id"]},
            )
            await session.commit()
        user["is_admin"] = True
        return user, await self.login(user["username"])

    async def deposit(self, admin: dict[str, str], user_id: int, amount: str) -> dict[str, Any]:
        response = await self.client.post(
            f"/admin/users/{user_id}/deposit", json={"amount": amount}, headers=admin
        )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data


@pytest.fixture
def api(client: httpx.AsyncClient, state: AppState) -> Api:
    return Api(client, state)


# ---------------------------------------------------------------------------- live app


async def empty_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in TABLES:
            await conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
async def live_state(backend: Backend) -> AsyncIterator[AppState]:
    """App state on the real engine: real commits, a real pool, concurrent sessions."""
    db = Database(backend.engine, backend.settings)
    try:
        yield AppState.build(backend.settings, db)
    finally:  # the engine is the session's, disposed at its end
        await empty_tables(backend.engine)


@pytest.fixture
async def live_client(live_state: AppState) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(live_state):
        yield c


@pytest.fixture
def live_api(live_client: httpx.AsyncClient, live_state: AppState) -> Api:
    return Api(live_client, live_state)

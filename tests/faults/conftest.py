"""Fault injection: a throwaway PostgreSQL cluster, a TCP proxy that cuts or stalls the network,
in-process apps and real `asyncblog serve` processes.

These tests are PostgreSQL-specific: each session creates its own cluster with Debian's
postgresql-common (`pg_createcluster`, as root, on a free port, named `abfault_<random>`, the
newest server under /usr/lib/postgresql or TEST_PG_CLUSTER_VERSION) so that tests may stop and
restart it; each test gets its own database in it. Everything is removed at
the end, also when a test fails. When the tooling is missing or fails, the tests that need it are
skipped with a loud reason on a laptop and fail when CI=true (the policy of
`tests.conftest.unavailable`). The few faults that also apply to SQLite and MariaDB run on all
three through `tests.conftest.backend`.

Nothing here mocks the database or its driver: outages are a stopped server or a proxy that
drops, refuses, blackholes or stalls real TCP connections; slowness is a real row lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from asyncblog import migrations
from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.config import Settings
from tests.conftest import IN_CI, Api

T = TypeVar("T")

APP_NAME = "asyncblog"  # the application_name the app's PostgreSQL connections carry
DB_UNAVAILABLE = {"detail": "Database unavailable"}
HANG = 10.0  # seconds after which a request that has not answered counts as hung


# ---------------------------------------------------------------------------- small helpers


@pytest.fixture(autouse=True)
def _quiet_expected_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """An outage makes the app log a WARNING with a traceback per refused request, as it
    should; keep a failing test's captured log to the ERRORs (unhandled errors, i.e. 500s)."""
    caplog.set_level(logging.ERROR, logger="asyncblog.error")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tooling_unavailable(why: str) -> None:
    message = f"SKIPPED FAULT TESTS: a throwaway PostgreSQL cluster is needed ({why})"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


async def ends_within(
    awaitable: Awaitable[T],
    what: str,
    seconds: float = HANG,
    on_hang: Callable[[], object] | None = None,
) -> T:
    """The result of `awaitable`, or a test failure saying it hung.

    Not `asyncio.wait_for`: cancelling a request stuck on a stalled socket can itself hang in the
    request's clean-up (a ROLLBACK on the same socket). `on_hang` runs first to unstick it (e.g.
    cut the proxy), so the test fails with a message instead of hanging the run.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    if on_hang is not None:
        on_hang()
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    pytest.fail(f"HANG: {what} did not end within {seconds:.0f}s", pytrace=False)


def assert_db_unavailable(response: httpx.Response, what: str = "") -> None:
    """The contract's answer to an unreachable database: 503, the fixed detail, Retry-After."""
    context = f"{what}: {response.status_code} {response.text}"
    assert response.status_code == 503, context
    assert response.json() == DB_UNAVAILABLE, context
    assert response.headers.get("retry-after"), context


# ---------------------------------------------------------------------------- the cluster


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (fixed postgresql-common commands)
        list(args), capture_output=True, text=True, timeout=timeout, check=True
    )


def _pg_version() -> str | None:
    wanted = os.environ.get("TEST_PG_CLUSTER_VERSION")
    if wanted:
        return wanted
    versions = [
        p.parent.parent.name
        for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if p.parent.parent.name.isdigit()
    ]
    return max(versions, key=int) if versions else None


@dataclass
class Cluster:
    version: str
    name: str
    port: int

    @property
    def log_file(self) -> Path:
        return Path(f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log")

    def url(self, database: str = "postgres", port: int | None = None) -> URL:
        return URL.create(
            "postgresql+asyncpg",
            username="postgres",
            host="127.0.0.1",
            port=port or self.port,
            database=database,
        )

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def _ctl(self, action: str) -> None:
        await asyncio.to_thread(_run, "pg_ctlcluster", self.version, self.name, action)

    async def stop(self) -> None:
        """Fast shutdown: every backend is terminated (57P01), open transactions roll back."""
        await self._ctl("stop")

    async def start(self) -> None:
        await self._ctl("start")

    def running(self) -> bool:
        status = subprocess.run(  # noqa: S603
            ["pg_ctlcluster", self.version, self.name, "status"],  # noqa: S607
            capture_output=True,
            check=False,
            timeout=30,
        )
        return status.returncode == 0

    async def ensure_running(self) -> None:
        if not await asyncio.to_thread(self.running):
            await self.start()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of our own, that tests may stop and start; dropped at the end."""
    if shutil.which("pg_createcluster") is None or shutil.which("pg_ctlcluster") is None:
        tooling_unavailable("pg_createcluster/pg_ctlcluster (postgresql-common) not installed")
    if os.geteuid() != 0:
        tooling_unavailable("pg_createcluster must run as root")
    version = _pg_version()
    if version is None:
        tooling_unavailable("no PostgreSQL server under /usr/lib/postgresql")
        raise AssertionError("unreachable")
    cluster = Cluster(version, f"abfault_{uuid.uuid4().hex[:10]}", free_port())
    try:
        try:
            _run(
                "pg_createcluster",
                version,
                cluster.name,
                "--port",
                str(cluster.port),
                # A test cluster: durability off, room for a few servers' pools, and the
                # database and application name in each log line.
                *("-o", "fsync=off", "-o", "synchronous_commit=off"),
                *("-o", "full_page_writes=off", "-o", "max_connections=300"),
                *("-o", "log_line_prefix=%m [%p] %q%u@%d app=%a "),
                "--",
                "--auth=trust",
            )
            _run("pg_ctlcluster", version, cluster.name, "start")
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            tooling_unavailable(f"{type(exc).__name__}: {exc} {detail}".strip())
        yield cluster
    finally:
        subprocess.run(  # noqa: S603
            ["pg_dropcluster", version, cluster.name, "--stop"],  # noqa: S607
            capture_output=True,
            check=False,
            timeout=60,
        )


@dataclass
class PgDatabase:
    cluster: Cluster
    name: str
    engine: AsyncEngine  # the tests' own view: direct, no pool, no application_name

    @property
    def url(self) -> URL:
        return self.cluster.url(self.name)

    def url_via(self, proxy: FaultProxy) -> URL:
        return self.cluster.url(self.name, port=proxy.port)

    async def app_connections(self) -> list[dict[str, Any]]:
        """The app's connections to this database, from pg_stat_activity."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT pid, state, wait_event_type, wait_event, query "
                    "FROM pg_stat_activity WHERE application_name = :app AND datname = :db"
                ),
                {"app": APP_NAME, "db": self.name},
            )
            return [dict(row._mapping) for row in rows]


async def _admin(cluster: Cluster, sql: str) -> None:
    conn = await asyncpg.connect(cluster.dsn(), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def pg_database(pg_cluster: Cluster) -> AsyncIterator[PgDatabase]:
    """A fresh, migrated database in the throwaway cluster; dropped afterwards (the cluster is
    started again first if the test left it stopped)."""
    name = f"abfault_{uuid.uuid4().hex[:10]}"
    await pg_cluster.ensure_running()
    await _admin(pg_cluster, f"CREATE DATABASE {name}")
    engine = create_async_engine(pg_cluster.url(name), poolclass=NullPool)
    try:
        await asyncio.to_thread(migrations.upgrade, pg_cluster.url(name))
        yield PgDatabase(pg_cluster, name, engine)
    finally:
        await engine.dispose()
        await pg_cluster.ensure_running()
        await _admin(pg_cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------------------- the proxy


class FaultProxy:
    """A TCP proxy 127.0.0.1:port -> 127.0.0.1:target that can break the network for real.

    - `cut()`: abort every connection (both sides see a reset) and refuse new ones (the listening
      socket is closed: "connection refused").
    - `cut(blackhole=True)`: abort every connection; new ones are accepted and never answered.
    - `stall()`: connections stay open but no byte is forwarded either way (a hung server or a
      network that drops packets); new ones are accepted and stall too.
    - `heal()`: back to forwarding; stalled bytes flow on.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "up"
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._transports.add(writer.transport)
        self.accepted += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode == "blackhole":
                await reader.read()  # say nothing until the client gives up or we drop it
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._transports.add(upstream.transport)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.transport.abort()
                    self._transports.discard(w.transport)
            self._tasks.discard(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.transport.abort()

    def _drop_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for transport in list(self._transports):
            transport.abort()

    def cut(self, *, blackhole: bool = False) -> None:
        self.mode = "blackhole" if blackhole else "refuse"
        if not blackhole and self._server is not None:
            self._server.close()
            self._server = None
        self._drop_all()
        self._flowing.set()

    def stall(self) -> None:
        self.mode = "stall"
        self._flowing.clear()

    async def heal(self) -> None:
        if self.mode == "blackhole":
            self._drop_all()  # the silent ones: their clients gave up long ago
        self.mode = "up"
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop_all()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)


@pytest.fixture
async def proxy(pg_cluster: Cluster) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(pg_cluster.port)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


# ---------------------------------------------------------------------------- the app


@asynccontextmanager
async def in_process_app(settings: Settings, proxy: FaultProxy | None = None) -> AsyncIterator[Api]:
    """The app with its own engine and pool (as in production), called through httpx in this
    event loop. At the end the proxy is healed first, so that disposing of the pool cannot hang
    on a stalled socket."""
    state = AppState.build(settings)
    app = create_app(state=state)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", timeout=60
        ) as client:
            yield Api(client, state)
    finally:
        if proxy is not None:
            await proxy.heal()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state.db.dispose(), 10)


@dataclass(frozen=True)
class Member:
    id: int
    username: str
    headers: dict[str, str]


async def _register(client: httpx.AsyncClient, username: str) -> Member:
    body = {"username": username, "email": f"{username}@example.com", "password": "password123"}
    created = await client.post("/users", json=body)
    assert created.status_code == 201, created.text
    token = await client.post("/auth/token", data={"username": username, "password": "password123"})
    assert token.status_code == 200, token.text
    return Member(
        created.json()["id"],
        username,
        {"Authorization": f"Bearer {token.json()['access_token']}"},
    )


async def members(
    client: httpx.AsyncClient, engine: AsyncEngine, n: int, funds: str = "100.00"
) -> tuple[dict[str, str], list[Member]]:
    """An admin (promoted with SQL through `engine`) and `n` users with `funds` deposited, all
    registered and logged in through the HTTP API of `client`."""
    tag = uuid.uuid4().hex[:6]
    admin = await _register(client, f"admin_{tag}")
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET is_admin = :yes WHERE id = :id"), {"yes": True, "id": admin.id}
        )
    users = []
    for i in range(n):
        user = await _register(client, f"u{i}_{tag}")
        deposit = await client.post(
            f"/admin/users/{user.id}/deposit", json={"amount": funds}, headers=admin.headers
        )
        assert deposit.status_code == 201, deposit.text
        users.append(user)
    return admin.headers, users


def send(
    client: httpx.AsyncClient, sender: Member, to: Member, amount: str = "1.00", **kw: Any
) -> Awaitable[httpx.Response]:
    return client.post(
        "/transfers", json={"to_user_id": to.id, "amount": amount}, headers=sender.headers, **kw
    )


# ---------------------------------------------------------------------------- the ledger


@dataclass(frozen=True)
class Ledger:
    rows: dict[int, tuple[Decimal, Decimal, Decimal, Decimal]]  # id: balance, dep, in, out
    total_balances: Decimal
    total_deposits: Decimal
    transfer_ids: frozenset[int]


LEDGER_ROWS = """
SELECT u.id, u.balance,
  COALESCE((SELECT SUM(t.amount) FROM transfers t
            WHERE t.to_user_id = u.id AND t.from_user_id IS NULL), 0),
  COALESCE((SELECT SUM(t.amount) FROM transfers t
            WHERE t.to_user_id = u.id AND t.from_user_id IS NOT NULL), 0),
  COALESCE((SELECT SUM(t.amount) FROM transfers t WHERE t.from_user_id = u.id), 0)
FROM users u ORDER BY u.id
"""
LEDGER_TOTALS = """
SELECT (SELECT COALESCE(SUM(balance), 0) FROM users),
       (SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE from_user_id IS NULL)
"""


async def ledger(engine: AsyncEngine) -> Ledger:
    """Balances and ledger sums straight from the tables (raw SQL, not through the app). On
    SQLite amounts are whole cents: the comparisons hold all the same."""
    async with engine.connect() as conn:
        rows = {
            int(r[0]): (
                Decimal(str(r[1])),
                Decimal(str(r[2])),
                Decimal(str(r[3])),
                Decimal(str(r[4])),
            )
            for r in await conn.execute(text(LEDGER_ROWS))
        }
        totals = (await conn.execute(text(LEDGER_TOTALS))).one()
        ids = await conn.scalars(text("SELECT id FROM transfers WHERE from_user_id IS NOT NULL"))
        return Ledger(rows, Decimal(str(totals[0])), Decimal(str(totals[1])), frozenset(ids))


async def assert_invariants(engine: AsyncEngine) -> Ledger:
    """No negative balance; sum(balance) == sum(deposits); each balance == deposits + in - out.
    A half-applied transfer (one side moved, or money moved without its ledger row) breaks one."""
    book = await ledger(engine)
    negative = {uid: row[0] for uid, row in book.rows.items() if row[0] < 0}
    assert not negative, f"negative balances: {negative}"
    assert book.total_balances == book.total_deposits, (
        f"sum of balances {book.total_balances} != sum of deposits {book.total_deposits}"
    )
    mismatched = {
        uid: (balance, dep + incoming - out)
        for uid, (balance, dep, incoming, out) in book.rows.items()
        if balance != dep + incoming - out
    }
    assert not mismatched, f"balance != deposits + in - out: {mismatched}"
    return book


def assert_created_are_recorded(responses: list[httpx.Response], book: Ledger) -> None:
    """Every 201 the clients saw names a transfer that is in the ledger."""
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    missing = created - book.transfer_ids
    assert not missing, f"answered 201 but not in the ledger: {sorted(missing)}"


# ---------------------------------------------------------------------------- real servers


def _script() -> str:
    sibling = Path(sys.executable).with_name("asyncblog")
    found = str(sibling) if sibling.exists() else shutil.which("asyncblog")
    assert found, "the asyncblog console script is not installed"
    return found


def server_env(url: URL, **settings: str) -> dict[str, str]:
    """The parent's environment minus every asyncblog setting, plus test settings."""
    names = {name.upper() for name in Settings.model_fields} | {"HOST", "PORT", "WEB_CONCURRENCY"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(
        DATABASE_URL=url.render_as_string(hide_password=False),
        SECRET_KEY="test-secret-key-that-is-long-enough-for-hs256",
        ARGON2_TIME_COST="1",
        ARGON2_MEMORY_COST_KIB="1024",
        ARGON2_PARALLELISM="1",
        ACCESS_LOG="false",
    )
    env.update(settings)
    return env


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def exit_code(self, bound: float) -> int:
        """Wait for the process to end; a failure with its log if it takes over `bound` s."""
        try:
            return await asyncio.wait_for(self.process.wait(), bound)
        except TimeoutError:
            raise AssertionError(
                f"serve did not exit within {bound:.0f}s:\n{self.output()[-3000:]}"
            ) from None


@asynccontextmanager
async def serving(url: URL, tmp_path: Path, **settings: str) -> AsyncIterator[ServerProcess]:
    """`asyncblog serve` on a free port against `url` (already migrated); killed at the end if
    the test did not stop it."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *(_script(), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"),
            env=server_env(url, **settings),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, port, log)
    try:
        async with httpx.AsyncClient(base_url=server.base, timeout=2) as client:
            for _ in range(150):
                assert server.running, f"serve exited early:\n{server.output()}"
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            else:
                pytest.fail(f"serve did not answer /healthz within 30s:\n{server.output()}")
        yield server
    finally:
        if server.running:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)


@asynccontextmanager
async def lock_user(engine: AsyncEngine, user_id: int) -> AsyncIterator[AsyncConnection]:
    """Hold what a write to this user needs, from another connection: its row lock on
    PostgreSQL and MariaDB, the database's write lock on SQLite. Yields the holder, which the
    caller may roll back early; otherwise the lock goes when the block ends."""
    async with engine.connect() as holder:
        await holder.begin()
        await holder.execute(
            text("UPDATE users SET balance = balance WHERE id = :id"), {"id": user_id}
        )
        yield holder

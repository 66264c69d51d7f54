"""The `asyncblog` command line: the real console script run as a subprocess (migrate, seed,
create-admin, serve, and what a bad setting looks like), and the commands run in this process
with typer's CliRunner where no process boundary is at stake (`serve` with `uvicorn.run`
replaced by a recorder, create-admin's prompts, seed's password, migrate's revision)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from alembic.script import ScriptDirectory
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner, Result

from asyncblog import log, migrations
from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.cli import cli
from asyncblog.config import Settings
from asyncblog.db.engine import create_engine
from tests.fixtures.databases import drop_database, new_database, settings_for
from tests.fixtures.postgres import free_port


def _script() -> str:
    sibling = Path(sys.executable).with_name("asyncblog")
    found = str(sibling) if sibling.exists() else shutil.which("asyncblog")
    assert found, "the asyncblog console script is not installed"
    return found


ASYNCBLOG = _script()
CHEAP_ARGON2 = {
    "ARGON2_TIME_COST": "1",
    "ARGON2_MEMORY_COST_KIB": "1024",
    "ARGON2_PARALLELISM": "1",
}


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    """The parent's environment minus every asyncblog setting, plus these."""
    names = {name.upper() for name in Settings.model_fields} | {"HOST", "PORT", "COLUMNS"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(CHEAP_ARGON2)
    env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own console script, fixed arguments)
        [ASYNCBLOG, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    return tmp_path / "db" / "blog.db"


@pytest.fixture
def env(sqlite_file: Path) -> dict[str, str]:
    return cli_env(f"sqlite+aiosqlite:///{sqlite_file}")


def query(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql, params).fetchall())


def tables(db: Path) -> set[str]:
    return {str(row[0]) for row in query(db, "SELECT name FROM sqlite_master WHERE type='table'")}


def verifies(password: str, hashed: str) -> bool:
    return PasswordHash((Argon2Hasher(),)).verify(password, hashed)


# ---------------------------------------------------------------------------- in process


def invoke(*args: str, database_url: str, stdin: str | None = None, **extra: str) -> Result:
    """`asyncblog ARGS` run in this process by typer's CliRunner, with the environment of
    `cli_env` (no asyncblog setting of the machine's; CliRunner puts the environment back
    afterwards). Call it in a thread (`asyncio.to_thread`): the commands run event loops of
    their own."""
    env: dict[str, str | None] = dict.fromkeys(os.environ)
    env.update(cli_env(database_url, **extra))
    return CliRunner().invoke(cli, list(args), env=env, input=stdin)


def done(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process commands run in the test's directory, as the subprocesses do (cwd=tmp_path):
    no `.env` of the checkout's is read, and the files they create stay in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
async def migrated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per module; tests take copies (`migrated_copy`)."""
    path = tmp_path_factory.mktemp("migrated") / "blog.db"
    await asyncio.to_thread(migrations.upgrade, f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def migrated_copy(migrated_file: Path, sqlite_file: Path, in_tmp: Path) -> Path:
    sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_file, sqlite_file)
    return sqlite_file


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch, in_tmp: Path) -> list[dict[str, Any]]:
    """`serve` in process: `uvicorn.run` replaced by a recorder of its arguments (so `serve`
    returns at once), and `serve`'s logging set-up skipped (it would replace pytest's handlers
    on the root logger with one on CliRunner's stderr, gone after the test)."""
    calls: list[dict[str, Any]] = []

    def run(app: str, **options: Any) -> None:
        calls.append({"app": app, **options})

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(log, "configure_logging", lambda *args, **kwargs: None)
    return calls


# ---------------------------------------------------------------------------- migrate


def test_migrate_creates_the_tables(env: dict[str, str], sqlite_file: Path, tmp_path: Path) -> None:
    assert not sqlite_file.exists()
    ok(run_cli("migrate", env=env, cwd=tmp_path))
    assert {"users", "posts", "transfers", "alembic_version"} <= tables(sqlite_file)
    assert query(sqlite_file, "SELECT count(*) FROM users") == [(0,)]
    # Running it again is harmless.
    ok(run_cli("migrate", env=env, cwd=tmp_path))
    assert len(query(sqlite_file, "SELECT version_num FROM alembic_version")) == 1


# ---------------------------------------------------------------------------- seed


async def test_seed_sqlite(env: dict[str, str], sqlite_file: Path, tmp_path: Path) -> None:
    ok(await asyncio.to_thread(run_cli, "migrate", env=env, cwd=tmp_path))
    ok(
        await asyncio.to_thread(
            run_cli, "seed", "--users", "50", "--posts-per-user", "3", env=env, cwd=tmp_path
        )
    )
    assert query(sqlite_file, "SELECT count(*) FROM users") == [(50,)]
    assert query(sqlite_file, "SELECT count(*) FROM posts") == [(150,)]
    per_author = query(
        sqlite_file,
        "SELECT u.username, count(p.id) FROM users u LEFT JOIN posts p ON p.author_id = u.id "
        "GROUP BY u.id ORDER BY u.id",
    )
    assert [name for name, _ in per_author] == [f"user{n}" for n in range(1, 51)]
    assert {count for _, count in per_author} == {3}
    emails = query(sqlite_file, "SELECT email FROM users ORDER BY id")
    assert emails == [(f"user{n}@example.com",) for n in range(1, 51)]
    # one hash shared by all: hashing each would cost the seeding an Argon2 run per user
    assert query(sqlite_file, "SELECT count(DISTINCT hashed_password) FROM users") == [(1,)]
    (hashed,) = query(sqlite_file, "SELECT hashed_password FROM users ORDER BY id LIMIT 1")[0]
    assert isinstance(hashed, str) and hashed.startswith("$argon2")
    assert verifies("password123", hashed)

    # A seeded user logs in through the app and sees itself.
    url = f"sqlite+aiosqlite:///{sqlite_file}"
    state = AppState.build(settings_for(url))
    try:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            name = str(per_author[-1][0])
            response = await client.post(
                "/auth/token", data={"username": name, "password": "password123"}
            )
            assert response.status_code == 200, response.text
            headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
            me = await client.get("/users/me", headers=headers)
            assert me.status_code == 200
            assert me.json()["username"] == name
            assert me.json()["balance"] == "0.00"
            posts = await client.get("/posts", params={"author_id": me.json()["id"]})
            assert len(posts.json()) == 3
            wrong = await client.post(
                "/auth/token", data={"username": name, "password": "wrong-password"}
            )
            assert wrong.status_code == 401
    finally:
        await state.db.dispose()


@pytest.mark.parametrize("backend_name", ["postgresql", "mariadb"])
async def test_seed_on_a_server_database(tmp_path: Path, backend_name: str) -> None:
    url: URL = await new_database(backend_name, tmp_path)
    try:
        env = cli_env(url.render_as_string(hide_password=False))
        ok(await asyncio.to_thread(run_cli, "migrate", env=env, cwd=tmp_path))
        ok(
            await asyncio.to_thread(
                run_cli, "seed", "--users", "50", "--posts-per-user", "3", env=env, cwd=tmp_path
            )
        )
        engine = create_engine(settings_for(url), url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT count(*) FROM users")) == 50
                assert await conn.scalar(text("SELECT count(*) FROM posts")) == 150
                rows = (
                    await conn.execute(
                        text(
                            "SELECT u.username, u.email, count(p.id) FROM users u "
                            "LEFT JOIN posts p ON p.author_id = u.id "
                            "GROUP BY u.id, u.username, u.email ORDER BY u.id"
                        )
                    )
                ).all()
                assert [(name, email) for name, email, _ in rows] == [
                    (f"user{n}", f"user{n}@example.com") for n in range(1, 51)
                ]
                assert {count for _, _, count in rows} == {3}
                shared = "SELECT count(DISTINCT hashed_password) FROM users"
                assert await conn.scalar(text(shared)) == 1
                hashed = await conn.scalar(text("SELECT hashed_password FROM users LIMIT 1"))
                assert verifies("password123", str(hashed))
        finally:
            await engine.dispose()
    finally:
        await drop_database(backend_name, url)


# ---------------------------------------------------------------------------- create-admin


def test_create_admin(env: dict[str, str], sqlite_file: Path, tmp_path: Path) -> None:
    ok(run_cli("migrate", env=env, cwd=tmp_path))
    args = ("create-admin", "--username", "root1", "--email", "root1@example.com")
    result = ok(run_cli(*args, "--password", "adminpass1", env=env, cwd=tmp_path))
    assert "adminpass1" not in result.stdout + result.stderr
    rows = query(
        sqlite_file, "SELECT username, email, is_admin, is_active, hashed_password FROM users"
    )
    assert len(rows) == 1
    username, email, is_admin, is_active, hashed = rows[0]
    assert (username, email, is_admin, is_active) == ("root1", "root1@example.com", 1, 1)
    assert isinstance(hashed, str) and hashed != "adminpass1"
    assert verifies("adminpass1", hashed)


@pytest.mark.parametrize(
    ("username", "email", "field"),
    [
        ("root1", "another@example.com", "username"),
        ("ROOT1", "another@example.com", "username"),
        ("another", "root1@example.com", "email"),
    ],
)
def test_create_admin_twice_fails_cleanly(
    env: dict[str, str],
    sqlite_file: Path,
    tmp_path: Path,
    username: str,
    email: str,
    field: str,
) -> None:
    ok(run_cli("migrate", env=env, cwd=tmp_path))
    first = ("--username", "root1", "--email", "root1@example.com", "--password", "adminpass1")
    ok(run_cli("create-admin", *first, env=env, cwd=tmp_path))

    again = ("--username", username, "--email", email, "--password", "adminpass2")
    result = run_cli("create-admin", *again, env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr.strip()
    assert message, "a failure says why"
    assert field in message.lower()
    assert "already" in message.lower()
    assert query(sqlite_file, "SELECT username FROM users") == [("root1",)]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--username", "r", "--email", "r@example.com", "--password", "adminpass1"), "username"),
        (("--username", "root2", "--email", "nope", "--password", "adminpass1"), "email"),
        (("--username", "root3", "--email", "r3@example.com", "--password", "short"), "password"),
    ],
)
def test_create_admin_with_invalid_input_fails_cleanly(
    env: dict[str, str], sqlite_file: Path, tmp_path: Path, args: tuple[str, ...], field: str
) -> None:
    ok(run_cli("migrate", env=env, cwd=tmp_path))
    result = run_cli("create-admin", *args, env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert field in result.stderr.lower()
    assert query(sqlite_file, "SELECT count(*) FROM users") == [(0,)]


# ---------------------------------------------------------------------------- bad settings


ADMIN_ARGS = ("--username", "root9", "--email", "r9@example.com", "--password", "adminpass9")


@pytest.mark.parametrize(
    ("url", "args"),
    [
        ("oracle://x", ("migrate",)),
        ("oracle://x", ("seed", "--users", "1")),
        ("oracle://x", ("create-admin", *ADMIN_ARGS)),
        ("oracle://x", ("serve",)),
        ("oracle://x", ("downgrade", "base")),
        ("mysql://x", ("migrate",)),
        ("not a url", ("migrate",)),
    ],
    ids=["migrate", "seed", "create-admin", "serve", "downgrade", "mysql-migrate", "not-a-url"],
)
def test_bad_setting_is_one_line_and_exit_code_2(
    tmp_path: Path, url: str, args: tuple[str, ...]
) -> None:
    result = run_cli(*args, env=cli_env(url), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing was created


@pytest.mark.parametrize("key", ["short", "x" * 31, "é" * 15])  # 5, 31, 30 bytes
def test_a_short_secret_key_stops_start_up_in_one_line(
    tmp_path: Path, sqlite_file: Path, key: str
) -> None:
    env = cli_env(f"sqlite+aiosqlite:///{sqlite_file}", SECRET_KEY=key)
    result = run_cli("serve", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SECRET_KEY" in lines[0] and "32 bytes" in lines[0]
    assert key not in result.stderr
    assert not sqlite_file.exists()


def test_a_new_sqlite_file_is_readable_by_its_owner_only(
    env: dict[str, str], sqlite_file: Path, tmp_path: Path
) -> None:
    ok(run_cli("migrate", env=env, cwd=tmp_path))
    modes = {p.name: p.stat().st_mode & 0o777 for p in sqlite_file.parent.iterdir()}
    assert modes[sqlite_file.name] == 0o600, modes
    for suffix in ("-wal", "-shm"):  # SQLite gives them the database file's mode
        if sqlite_file.name + suffix in modes:
            assert modes[sqlite_file.name + suffix] == 0o600, modes


def test_partial_first_admin_setting_is_one_line(tmp_path: Path, sqlite_file: Path) -> None:
    env = cli_env(f"sqlite+aiosqlite:///{sqlite_file}", FIRST_ADMIN_USERNAME="root")
    result = run_cli("migrate", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "FIRST_ADMIN" in lines[0]
    assert not sqlite_file.exists()


@pytest.mark.parametrize(
    "args",
    [("migrate",), ("seed", "--users", "1"), ("create-admin", *ADMIN_ARGS), ("downgrade", "base")],
    ids=["migrate", "seed", "create-admin", "downgrade"],
)
def test_unreachable_database_is_a_clean_failure(tmp_path: Path, args: tuple[str, ...]) -> None:
    # Port 1 on localhost: nothing listens there, the connection is refused at once.
    env = cli_env("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    result = run_cli(*args, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stderr.strip()


@pytest.mark.parametrize(
    "args", [("seed", "--users", "1"), ("create-admin", *ADMIN_ARGS)], ids=["seed", "create-admin"]
)
def test_commands_on_an_unmigrated_database_fail_cleanly(
    env: dict[str, str], sqlite_file: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    sqlite_file.parent.mkdir()
    result = run_cli(*args, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.stderr.strip()


def test_downgrade_to_base_removes_the_tables(
    env: dict[str, str], sqlite_file: Path, tmp_path: Path
) -> None:
    ok(run_cli("migrate", env=env, cwd=tmp_path))
    ok(run_cli("downgrade", "base", env=env, cwd=tmp_path))
    assert not tables(sqlite_file) & {"users", "posts", "transfers"}
    ok(run_cli("migrate", env=env, cwd=tmp_path))
    assert {"users", "posts", "transfers"} <= tables(sqlite_file)


# ---------------------------------------------------------------------------- serve


@pytest.fixture
def server(tmp_path: Path, sqlite_file: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = cli_env(f"sqlite+aiosqlite:///{sqlite_file}", HOST="127.0.0.1", PORT=str(port))
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(  # noqa: S603 (our own console script)
        [ASYNCBLOG, "serve"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def wait_until_up(process: subprocess.Popen[str], base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited early:\n{log.read_text()}"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"serve did not answer /healthz within 60s:\n{log.read_text()}")


def test_serve_migrates_answers_and_stops_on_sigterm(
    server: tuple[subprocess.Popen[str], str], sqlite_file: Path, tmp_path: Path
) -> None:
    process, base = server
    log = tmp_path / "serve.log"
    wait_until_up(process, base, log)

    health = httpx.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert health.headers.get("x-request-id")
    assert httpx.get(f"{base}/readyz", timeout=5).json() == {"status": "ok", "database": "ok"}
    users = httpx.get(f"{base}/users", timeout=5)
    assert users.status_code == 200
    assert users.json() == []
    assert {"users", "posts", "transfers"} <= tables(sqlite_file)  # migrated on start

    # A real round trip over the network: register, log in, write a post.
    created = httpx.post(
        f"{base}/users",
        json={"username": "served", "email": "served@example.com", "password": "password123"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    token = httpx.post(
        f"{base}/auth/token", data={"username": "served", "password": "password123"}, timeout=30
    )
    assert token.status_code == 200, token.text
    post = httpx.post(
        f"{base}/posts",
        json={"title": "over the wire", "content": "hello"},
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        timeout=30,
    )
    assert post.status_code == 201, post.text
    assert query(sqlite_file, "SELECT title FROM posts") == [("over the wire",)]

    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not stop within 10s of SIGTERM:\n{log.read_text()}")
    output = log.read_text()
    # A graceful stop: uvicorn finishes the shutdown, then re-raises the SIGTERM it caught (so
    # the exit status says "terminated by SIGTERM"); a plain 0 is fine too.
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    # not a terminal: JSON lines, and no words for a person
    startup = next(line for line in output.splitlines() if "Application startup complete" in line)
    assert json.loads(startup)["msg"] == "Application startup complete."
    assert "interactive docs" not in output
    assert "Traceback" not in output
    assert "password123" not in output
    assert "$argon2" not in output
    # no access log by default: neither uvicorn's line per request nor the middleware's
    assert "/healthz" not in output and "/auth/token" not in output, output


def test_serve_at_a_terminal_prints_readable_lines_and_where_to_go(
    env: dict[str, str], tmp_path: Path
) -> None:
    """With stderr a terminal (a pty here), `serve` says where the docs are and how to create
    the first admin, and logs readable lines instead of JSON."""
    import pty

    port = free_port()
    leader, follower = pty.openpty()
    process = subprocess.Popen(  # noqa: S603 (our own console script, fixed arguments)
        [ASYNCBLOG, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Application startup complete" not in seen and time.monotonic() < deadline:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the process ended: the terminal is gone
                break
            seen += chunk
    finally:
        process.terminate()
        process.wait(timeout=10)
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "Application startup complete" in text, text
    assert f"the interactive docs are at http://127.0.0.1:{port}/docs" in text
    assert "asyncblog create-admin" in text and "FIRST_ADMIN_USERNAME" in text
    startup = next(line for line in text.splitlines() if "Application startup complete" in line)
    assert not startup.lstrip().startswith("{"), startup  # not a JSON line
    assert " INFO " in startup, startup


@pytest.mark.parametrize("backend_name", ["postgresql", "mariadb"])
async def test_serve_refuses_more_workers_than_the_database_can_connect(
    tmp_path: Path, backend_name: str
) -> None:
    """N workers x (POOL_SIZE + POOL_MAX_OVERFLOW) above the server's max_connections: one line,
    exit 2, before any worker starts."""
    url: URL = await new_database(backend_name, tmp_path)
    try:
        env = cli_env(url.render_as_string(hide_password=False), WEB_CONCURRENCY="1000")
        result = await asyncio.to_thread(run_cli, "serve", "--no-migrate", env=env, cwd=tmp_path)
        assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert "1000 workers x 15 connections" in lines[0]
        assert "max_connections" in lines[0]
    finally:
        await drop_database(backend_name, url)


def test_behind_a_proxy_forwarded_addresses_count_only_from_a_trusted_peer(
    server: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    """uvicorn takes the client's address from X-Forwarded-For only when the peer is trusted
    (127.0.0.1 by default, FORWARDED_ALLOW_IPS): behind a local proxy, clients with different
    forwarded addresses are throttled apart; from another peer the header is ignored, so
    forged addresses do not escape the limit (LOGIN_MAX_FAILURES, 5, per username and address)."""
    process, base = server
    wait_until_up(process, base, tmp_path / "serve.log")
    body = {"username": "proxied", "email": "proxied@example.com", "password": "password123"}
    assert httpx.post(f"{base}/users", json=body, timeout=30).status_code == 201

    def failed_login(forwarded: str, peer: str) -> int:
        transport = httpx.HTTPTransport(local_address=peer)
        with httpx.Client(transport=transport, timeout=30) as client:
            response = client.post(
                f"{base}/auth/token",
                data={"username": "proxied", "password": "wrong-password"},
                headers={"X-Forwarded-For": forwarded},
            )
            return response.status_code

    trusted = [failed_login("203.0.113.1", "127.0.0.1") for _ in range(6)]
    assert trusted == [401] * 5 + [429]
    assert failed_login("203.0.113.2", "127.0.0.1") == 401  # another client behind the proxy
    # 127.0.0.2 is not trusted: every forged address counts as 127.0.0.2
    forged = [failed_login(f"198.51.100.{n}", "127.0.0.2") for n in range(6)]
    assert forged == [401] * 5 + [429]


# ---------------------------------------------------------------------------- serve, in process


async def test_serve_runs_uvicorn_with_uvloop_and_httptools(
    uvicorn_runs: list[dict[str, Any]], sqlite_file: Path
) -> None:
    """`serve` hands uvicorn the app factory with uvloop, httptools, no access log (the
    middleware logs requests when asked) and SHUTDOWN_TIMEOUT as the graceful shutdown; it
    binds 127.0.0.1:8000 with one worker unless told otherwise, and `--host`/`--port`/`--workers`
    are what it runs."""
    url = f"sqlite+aiosqlite:///{sqlite_file}"
    done(await asyncio.to_thread(invoke, "serve", "--no-migrate", database_url=url))
    done(
        await asyncio.to_thread(
            invoke,
            "serve",
            "--no-migrate",
            "--host",
            "127.0.0.2",
            "--port",
            "9001",
            "--workers",
            "3",
            database_url=url,
            SHUTDOWN_TIMEOUT="7",
        )
    )
    default, given = uvicorn_runs
    expected = {
        "app": "asyncblog.api.app:app_from_env",
        "factory": True,
        "workers": 1,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_config": None,
    }
    assert default == {
        **expected,
        "host": "127.0.0.1",
        "port": 8000,
        "timeout_graceful_shutdown": 20,
    }
    assert given == {
        **expected,
        "host": "127.0.0.2",
        "port": 9001,
        "workers": 3,
        "timeout_graceful_shutdown": 7,
    }
    # what uvicorn is told to load is there (it would fail at start otherwise)
    import httptools
    import uvloop

    assert httptools.__name__ == "httptools" and uvloop.__name__ == "uvloop"


@pytest.mark.parametrize(
    ("flags", "migrated"),
    [((), True), (("--migrate",), True), (("--no-migrate",), False)],
    ids=["default", "migrate", "no-migrate"],
)
async def test_serve_migrates_a_new_sqlite_file_unless_told_not_to(
    uvicorn_runs: list[dict[str, Any]], sqlite_file: Path, flags: tuple[str, ...], migrated: bool
) -> None:
    """On SQLite `serve` upgrades the schema before uvicorn starts, but not with
    `--no-migrate`."""
    url = f"sqlite+aiosqlite:///{sqlite_file}"
    done(await asyncio.to_thread(invoke, "serve", *flags, database_url=url))
    assert len(uvicorn_runs) == 1
    found = tables(sqlite_file) if await asyncio.to_thread(sqlite_file.exists) else set()
    assert ({"users", "posts", "transfers", "alembic_version"} <= found) is migrated, found
    if not migrated:
        assert not found & {"users", "posts", "transfers"}


async def test_serve_migrates_a_server_database_only_with_migrate(
    uvicorn_runs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """On PostgreSQL (as on MariaDB: anything but SQLite) `serve` leaves the schema alone unless
    given `--migrate`: an empty database stays empty, then `--migrate` creates the tables."""
    url: URL = await new_database("postgresql", tmp_path)
    try:
        rendered = url.render_as_string(hide_password=False)
        key = "k" * 32

        async def table_names() -> set[str]:
            engine = create_engine(settings_for(url), url, poolclass=NullPool)
            try:
                async with engine.connect() as conn:
                    found = await conn.scalars(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                    return set(found)
            finally:
                await engine.dispose()

        done(await asyncio.to_thread(invoke, "serve", database_url=rendered, SECRET_KEY=key))
        assert await table_names() == set()
        done(
            await asyncio.to_thread(
                invoke, "serve", "--migrate", database_url=rendered, SECRET_KEY=key
            )
        )
        assert {"users", "posts", "transfers", "alembic_version"} <= await table_names()
        assert len(uvicorn_runs) == 2  # both served
    finally:
        await drop_database("postgresql", url)


# ---------------------------------------------------------------------------- migrate, in process


async def test_migrate_goes_to_head_or_to_the_revision_named(
    sqlite_file: Path, in_tmp: Path
) -> None:
    """`migrate` leaves the database at the script directory's head (not merely "some
    version"); `migrate 0001` stops there: the users and posts of 0001, no ledger (0002)."""
    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    assert head is not None
    url = f"sqlite+aiosqlite:///{sqlite_file}"
    done(await asyncio.to_thread(invoke, "migrate", database_url=url))
    assert query(sqlite_file, "SELECT version_num FROM alembic_version") == [(head,)]

    first = in_tmp / "first" / "blog.db"
    done(
        await asyncio.to_thread(
            invoke, "migrate", "0001", database_url=f"sqlite+aiosqlite:///{first}"
        )
    )
    assert query(first, "SELECT version_num FROM alembic_version") == [("0001",)]
    assert {"users", "posts"} <= tables(first)
    assert "transfers" not in tables(first)


# ---------------------------------------------------------------------------- create-admin, prompts


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("--username", "root1", "--email", "root1@example.com"), "adminpass1\nadminpass1\n"),
        ((), "root1\nroot1@example.com\nadminpass1\nadminpass1\n"),
    ],
    ids=["password", "everything"],
)
async def test_create_admin_prompts_for_what_is_missing(
    migrated_copy: Path, args: tuple[str, ...], stdin: str
) -> None:
    """Without `--password` (or without any option) `create-admin` asks for what is missing on
    stdin, the password twice and not echoed; the admin it creates logs in with that password."""
    url = f"sqlite+aiosqlite:///{migrated_copy}"
    result = done(
        await asyncio.to_thread(invoke, "create-admin", *args, database_url=url, stdin=stdin)
    )
    assert "Password" in result.output and "Repeat for confirmation" in result.output
    assert "adminpass1" not in result.output  # hidden input, and never printed
    rows = query(migrated_copy, "SELECT username, email, is_admin, is_active FROM users")
    assert rows == [("root1", "root1@example.com", 1, 1)]

    state = AppState.build(settings_for(url))
    try:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            token = await client.post(
                "/auth/token", data={"username": "root1", "password": "adminpass1"}
            )
            assert token.status_code == 200, token.text
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            me = await client.get("/users/me", headers=headers)
            assert me.json()["is_admin"] is True
    finally:
        await state.db.dispose()


async def test_create_admin_with_a_confirmation_that_differs_creates_nothing(
    migrated_copy: Path,
) -> None:
    """A repeated password that differs is refused (and asked again); with stdin at its end
    the command stops without an admin."""
    url = f"sqlite+aiosqlite:///{migrated_copy}"
    args = ("create-admin", "--username", "root1", "--email", "root1@example.com")
    result = await asyncio.to_thread(
        invoke, *args, database_url=url, stdin="adminpass1\nadminpass2\n"
    )
    assert result.exit_code != 0, result.output
    assert "do not match" in result.output
    assert query(migrated_copy, "SELECT count(*) FROM users") == [(0,)]


# ---------------------------------------------------------------------------- seed, in process


async def test_seed_with_a_password_of_ones_own(migrated_copy: Path) -> None:
    """`seed --password P`: user1..userN with userN@example.com, one shared hash of P (not of
    the default), and each seeded user logs in with P; the progress bar counts both tasks."""
    url = f"sqlite+aiosqlite:///{migrated_copy}"
    args = ("seed", "--users", "4", "--posts-per-user", "2", "--password", "other-pass")
    result = done(await asyncio.to_thread(invoke, *args, database_url=url))
    assert query(migrated_copy, "SELECT username, email FROM users ORDER BY id") == [
        (f"user{n}", f"user{n}@example.com") for n in range(1, 5)
    ]
    assert query(migrated_copy, "SELECT count(DISTINCT hashed_password) FROM users") == [(1,)]
    (hashed,) = query(migrated_copy, "SELECT hashed_password FROM users LIMIT 1")[0]
    assert verifies("other-pass", str(hashed)) and not verifies("password123", str(hashed))
    assert "4/4" in result.output and "8/8" in result.output, result.output

    state = AppState.build(settings_for(url))
    try:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for name, password, status in [
                ("user4", "other-pass", 200),
                ("user1", "password123", 401),
            ]:
                response = await client.post(
                    "/auth/token", data={"username": name, "password": password}
                )
                assert response.status_code == status, response.text
    finally:
        await state.db.dispose()

"""The README's claims about the test suite itself ("Tests"): what `make test` runs, which tests
run on which backend and how `-m` picks one, the databases, schema and transactions the fixtures
make and undo, the server addresses and their overrides, and what an unreachable backend does.

Claims about a session (what is left after it, what ran once in it) are checked on a session of
their own: a generated test file run in-process by `pytest.main` with the project's fixtures
(`-p tests.conftest`) and configuration (`pyproject.toml`), recording what it saw. Claims about
the collection read one in-process collection of `tests/` per `-m` expression (the first one
imports the test modules, the others reuse them).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from fastapi import HTTPException
from fastapi.routing import APIRoute
from sqlalchemy import text
from sqlalchemy.engine import make_url

from asyncblog import migrations
from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.db.engine import create_engine
from tests.fixtures import cluster, databases
from tests.fixtures.app import client_of
from tests.fixtures.cluster import tooling_unavailable
from tests.fixtures.databases import BACKENDS, settings_for, unavailable
from tests.fixtures.postgres import free_port

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PYPROJECT = ROOT / "pyproject.toml"

MARKERS = {"sqlite": "sqlite", "postgres": "postgresql", "mariadb": "mariadb"}


# ---------------------------------------------------------------------------- make test


def test_make_test_runs_ruff_check_ruff_format_check_strict_mypy_and_pytest() -> None:
    """`make test` runs the linter, the format check, mypy in strict mode and pytest: read from
    the commands `make -n test` would run (nothing is run) and mypy's configuration."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        ["make", "-n", "test"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    commands = [line.strip() for line in dry.stdout.splitlines()]
    wanted = {
        "ruff check": r"^\S*/ruff check\b.*\bsrc\b.*\btests\b",
        "ruff format --check": r"^\S*/ruff format --check\b.*\bsrc\b.*\btests\b",
        "mypy": r"^\S*/mypy(\s|$)",
        "pytest": r"^\S*/pytest(\s|$)",
    }
    missing = [
        name for name, pattern in wanted.items() if not any(re.search(pattern, c) for c in commands)
    ]
    assert not missing, f"`make -n test` runs no {missing}:\n{dry.stdout}"
    mypy = tomllib.loads(PYPROJECT.read_text())["tool"]["mypy"]
    assert mypy["strict"] is True  # `mypy` with no flag is `mypy --strict`
    assert {"src/asyncblog", "tests"} <= set(mypy["files"])  # the package and the tests


# ---------------------------------------------------------------------------- collection


@dataclass(frozen=True)
class Collected:
    nodeid: str
    path: str  # relative to tests/
    name: str  # the function's name, without the parameters
    backend: str | None  # the `backend` parameter, if the test takes it
    fixtures: frozenset[str]


class _Collector:
    def __init__(self) -> None:
        self.items: list[Collected] = []
        self.errors: list[str] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.errors.append(f"{report.nodeid}: {report.longreprtext}")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            assert isinstance(item, pytest.Function), item
            callspec = getattr(item, "callspec", None)
            params: dict[str, object] = callspec.params if callspec is not None else {}
            backend = params.get("backend")
            self.items.append(
                Collected(
                    item.nodeid,
                    item.path.relative_to(TESTS).as_posix(),
                    item.originalname,
                    backend if isinstance(backend, str) else None,
                    frozenset(item.fixturenames),
                )
            )


def run_pytest(args: list[str], *plugins: object) -> int:
    """pytest in this process, as a run of its own (its own configuration and plugins), never
    with the options of the run around it (`PYTEST_ADDOPTS`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PYTEST_ADDOPTS", raising=False)
        return int(pytest.main(["-p", "no:cacheprovider", *args], plugins=list(plugins)))


@pytest.fixture(scope="module")
def collections() -> dict[str | None, list[Collected]]:
    """`tests/` collected without `-m` and with each backend's marker."""
    found: dict[str | None, list[Collected]] = {}
    for marker in (None, *MARKERS):
        collector = _Collector()
        args = ["--collect-only", "-qq", str(TESTS), *(["-m", marker] if marker else [])]
        code = run_pytest(args, collector)
        assert code == 0, f"collecting {args} exited with {code}: {collector.errors}"
        found[marker] = collector.items
    return found


def test_every_test_taking_backend_runs_on_the_three_backends(
    collections: dict[str | None, list[Collected]],
) -> None:
    """Every test that takes `backend` (directly, or through `api`, `client`, `state`,
    `connection`, `live_api`) is collected once for each of SQLite, PostgreSQL and MariaDB."""
    assert set(BACKENDS) == {"sqlite", "postgresql", "mariadb"}
    backends_of: dict[tuple[str, str], set[str | None]] = {}
    for item in collections[None]:
        if "backend" in item.fixtures:
            backends_of.setdefault((item.path, item.name), set()).add(item.backend)
    assert len(backends_of) > 100  # the collection found the suite
    layers = {path.split("/")[0] for path, _ in backends_of}
    assert {"api", "services", "repositories"} <= layers, layers
    short = {test: found for test, found in backends_of.items() if found != set(BACKENDS)}
    assert not short, f"tests taking `backend` not collected for each of {BACKENDS}: {short}"


@pytest.mark.parametrize("marker", list(MARKERS))
def test_minus_m_selects_one_backends_tests(
    marker: str, collections: dict[str | None, list[Collected]]
) -> None:
    """`-m sqlite`, `-m postgres`, `-m mariadb` collect every test of that backend and none of
    another; the tests on the throwaway cluster count as `postgres`."""
    name = MARKERS[marker]
    everything = collections[None]
    selected = collections[marker]
    others = sorted(i.nodeid for i in selected if i.backend is not None and i.backend != name)
    assert not others, f"-m {marker} collects other backends' tests: {others[:10]}"
    wanted = {i.nodeid for i in everything if i.backend == name}
    if name == "postgresql":
        on_cluster = {i.nodeid for i in everything if "pg_cluster" in i.fixtures}
        assert len(on_cluster) > 10  # the fault tests on the throwaway cluster
        wanted |= on_cluster
    else:
        clustered = sorted(i.nodeid for i in selected if "pg_cluster" in i.fixtures)
        assert not clustered, f"-m {marker} collects tests on the PostgreSQL cluster: {clustered}"
    assert len(wanted) > 100
    missed = sorted(wanted - {i.nodeid for i in selected})
    assert not missed, f"-m {marker} leaves out: {missed[:10]}"


# ---------------------------------------------------------------------------- one session

# The session under observation: an isolated test and a live one write a row in every table
# the API writes (through the data path and through the ORM session), each followed by a test
# that counts the rows from another connection; and a test on the throwaway cluster.
PROBE = """
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncblog.api.state import AppState
from asyncblog.models import Base, User
from tests.fixtures.app import Api
from tests.fixtures.postgres import Cluster
from tests.fixtures.databases import Backend

RECORDS = Path(__file__).with_name("records.jsonl")
CURRENT = {
    "sqlite": "SELECT 'main'",
    "postgresql": "SELECT current_database()",
    "mariadb": "SELECT DATABASE()",
}


def record(**values: Any) -> None:
    with RECORDS.open("a") as out:
        out.write(json.dumps(values) + "\\n")


async def counts(conn: AsyncConnection) -> dict[str, int]:
    return {
        table: (await conn.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar_one()
        for table in sorted(Base.metadata.tables)
    }


async def write_everything(api: Api) -> None:
    admin, admin_headers = await api.admin()  # INSERT on the data path, UPDATE on an ORM session
    user, headers = await api.user()  # a login: a refresh token
    username = api.unique()
    bulk = await api.client.post(  # the ORM session
        "/users/bulk",
        json={"users": [{"username": username, "email": f"{username}@example.com",
                         "password": "password123"}]},
        headers=admin_headers,
    )
    assert bulk.status_code == 201, bulk.text
    await api.deposit(admin_headers, user["id"], "10.00")
    paid = await api.client.post(
        "/transfers", json={"to_user_id": admin["id"], "amount": "1.00"}, headers=headers
    )
    assert paid.status_code == 201, paid.text
    post = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=headers)
    assert post.status_code == 201, post.text


async def test_1_isolated(api: Api, backend: Backend, connection: AsyncConnection) -> None:
    await write_everything(api)  # both paths in one outer transaction, each seeing the other
    record(
        test="test_1_isolated",
        backend=backend.name,
        database=(await connection.execute(text(CURRENT[backend.name]))).scalar_one(),
        url=backend.url.render_as_string(hide_password=False),
        version=(await connection.execute(text("SELECT version_num FROM alembic_version")))
        .scalar_one(),
        counts=await counts(connection),
    )


async def test_2_isolated_data_path(
    api: Api, backend: Backend, connection: AsyncConnection
) -> None:
    await api.user()  # POST /users and /auth/token: units of work of the data path only
    record(test="test_2_isolated_data_path", backend=backend.name, counts=await counts(connection))


async def test_3_isolated_orm(
    state: AppState, backend: Backend, connection: AsyncConnection
) -> None:
    async with state.db.write_session() as session:
        session.add(User(username="orm_only", email="orm_only@example.com", hashed_password="x"))
        await session.commit()
    record(test="test_3_isolated_orm", backend=backend.name, counts=await counts(connection))


async def test_4_after_isolated(backend: Backend) -> None:
    async with backend.engine.connect() as conn:
        record(test="test_4_after_isolated", backend=backend.name, counts=await counts(conn))


async def test_5_live(live_api: Api, backend: Backend) -> None:
    await write_everything(live_api)
    async with backend.engine.connect() as conn:
        record(test="test_5_live", backend=backend.name, counts=await counts(conn))


async def test_6_after_live(backend: Backend) -> None:
    async with backend.engine.connect() as conn:
        record(test="test_6_after_live", backend=backend.name, counts=await counts(conn))


def test_7_cluster(pg_cluster: Cluster) -> None:
    listed = subprocess.run(
        ["pg_lsclusters", "-h"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    record(test="test_7_cluster", name=pg_cluster.name, listed=pg_cluster.name in listed)
"""

WRITTEN = ("users", "posts", "transfers", "refresh_tokens")  # what `write_everything` writes


@dataclass
class Outcome:
    outcome: str  # passed, failed, skipped
    reason: str


class _Outcomes:
    def __init__(self) -> None:
        self.by_test: dict[str, Outcome] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.by_test.setdefault(
                report.nodeid.split("::")[-1], Outcome(report.outcome, report.longreprtext)
            )


@dataclass
class Session:
    """What the observed session recorded, and what it migrated."""

    code: int
    outcomes: dict[str, Outcome]
    records: list[dict[str, Any]]
    migrated: list[str] = field(default_factory=list)

    def of(self, test: str, backend: str | None = None) -> dict[str, Any]:
        """The record of one test (on one backend); a backend or tooling that was not there is
        a skip with the reason (a failure under CI=true), as in the suite itself."""
        node = f"{test}[{backend}]" if backend else test
        found = [r for r in self.records if r["test"] == test and r.get("backend") == backend]
        if not found:
            outcome = self.outcomes.get(node)
            why = f"{outcome.outcome}: {outcome.reason}" if outcome else "did not run"
            if outcome is not None and outcome.outcome == "skipped":
                if backend is None:
                    tooling_unavailable(why)
                unavailable(backend or "", why)
            raise AssertionError(f"{node}: {why} (the session exited with {self.code})")
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """One session of the generated tests, with every `migrations.upgrade` call counted."""
    directory = tmp_path_factory.mktemp("suite_session")
    (directory / "test_probe_session.py").write_text(PROBE)
    migrated: list[str] = []
    upgrade: Callable[..., None] = migrations.upgrade

    def counted(url: Any = None, revision: str = "head") -> None:
        migrated.append(make_url(url).render_as_string(hide_password=False))
        upgrade(url, revision)

    outcomes = _Outcomes()
    modules, path = set(sys.modules), list(sys.path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(migrations, "upgrade", counted)
        code = run_pytest(
            [
                *("-c", str(PYPROJECT), "--rootdir", str(directory)),
                *("-p", "tests.conftest", "--import-mode=importlib", "-q"),
                *("--basetemp", str(directory / "tmp"), str(directory)),
            ],
            outcomes,
        )
    for name in set(sys.modules) - modules:  # the generated module, nothing else of its run
        if str(directory) in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]
    sys.path[:] = path
    records_file = directory / "records.jsonl"
    records = (
        [json.loads(line) for line in records_file.read_text().splitlines()]
        if records_file.exists()
        else []
    )
    return Session(code, outcomes.by_test, records, migrated)


async def _server_databases(backend: str, name: str) -> list[str]:
    """The databases of that name on the backend's server (through the admin URL)."""
    admin_url = make_url(databases.PG_ADMIN if backend == "postgresql" else databases.MARIADB_ADMIN)
    engine = create_engine(settings_for(admin_url), admin_url, isolation_level="AUTOCOMMIT")
    query = (
        "SELECT datname FROM pg_database WHERE datname = :name"
        if backend == "postgresql"
        else "SELECT schema_name FROM information_schema.schemata WHERE schema_name = :name"
    )
    try:
        async with engine.connect() as conn:
            return [row[0] for row in await conn.execute(text(query), {"name": name})]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend_name", ["postgresql", "mariadb"])
async def test_the_suite_makes_its_own_databases_and_drops_them(
    backend_name: str, session: Session
) -> None:
    """The session's tests ran on a database of their own, `asyncblog_test_<random>`, which is
    gone from the server after the session."""
    isolated = session.of("test_1_isolated", backend_name)
    name = isolated["database"]
    assert re.fullmatch(r"asyncblog_test_[0-9a-f]{10}", name), name
    assert make_url(isolated["url"]).database == name
    assert await _server_databases(backend_name, name) == []


def test_the_schema_is_made_once_per_backend_by_the_migrations(session: Session) -> None:
    """A session of several tests per backend ran the Alembic migrations once per backend, on
    the database those tests used, to the head revision."""
    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    for name in BACKENDS:
        isolated = session.of("test_1_isolated", name)
        assert isolated["version"] == head, name
        assert session.migrated.count(isolated["url"]) == 1, (name, session.migrated)
    assert len(session.migrated) == len(BACKENDS), session.migrated


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_each_test_is_rolled_back_data_path_and_orm_session_alike(
    backend_name: str, session: Session
) -> None:
    """Tests that wrote through the data path (`Database.checkout`), through an ORM session
    (`write_session`), and through both at once (the admin flag, `/users/bulk`, money, a post)
    saw their rows in their own transaction; the next test, on another connection of the
    engine, finds every table empty."""
    after = session.of("test_4_after_isolated", backend_name)["counts"]
    assert set(after.values()) == {0}, after
    data_path = session.of("test_2_isolated_data_path", backend_name)["counts"]
    assert (data_path["users"], data_path["refresh_tokens"]) == (1, 1), data_path
    orm = session.of("test_3_isolated_orm", backend_name)["counts"]
    assert orm["users"] == 1, orm
    both = session.of("test_1_isolated", backend_name)["counts"]
    assert both["users"] == 3, both  # an admin, a user, one by /users/bulk
    assert all(both[table] >= 1 for table in WRITTEN), both


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_live_tests_commit_for_real_and_leave_the_tables_empty(
    backend_name: str, session: Session
) -> None:
    """A live test's writes are committed (another connection sees them during the test), and
    after it every table is empty again."""
    during = session.of("test_5_live", backend_name)["counts"]
    assert during["users"] == 3, during
    assert all(during[table] >= 1 for table in WRITTEN), during
    after = session.of("test_6_after_live", backend_name)["counts"]
    assert set(after.values()) == {0}, after


def test_the_throwaway_cluster_is_dropped_after_the_session(session: Session) -> None:
    """The fault tests' cluster (`abfault_<random>`) exists during the session and is no longer
    listed by `pg_lsclusters` after it."""
    made = session.of("test_7_cluster")
    assert re.fullmatch(r"abfault_[0-9a-f]{10}", made["name"]), made
    assert made["listed"] is True
    listed = subprocess.run(
        ["pg_lsclusters", "-h"],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert made["name"] not in listed


# ---------------------------------------------------------------------------- servers


def databases_under(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> ModuleType:
    """A fresh copy of `tests/fixtures/databases.py`, executed under this environment (it reads
    `TEST_PG_URL`, `TEST_MARIADB_URL` and `CI` when imported)."""
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("_suite_databases_copy", databases.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_servers_default_to_local_postgres_and_root() -> None:
    """Unset, the admin URLs are PostgreSQL at 127.0.0.1:5432 as `postgres` and MariaDB at
    127.0.0.1:3306 as `root` with no password."""
    with pytest.MonkeyPatch.context() as mp:
        copy = databases_under(mp, TEST_PG_URL=None, TEST_MARIADB_URL=None)
        pg, maria = make_url(copy.PG_ADMIN), make_url(copy.MARIADB_ADMIN)
    assert (pg.get_backend_name(), pg.host, pg.port, pg.username, pg.password) == (
        "postgresql",
        "127.0.0.1",
        5432,
        "postgres",
        None,
    )
    assert (maria.get_backend_name(), maria.host, maria.port, maria.username, maria.password) == (
        "mysql",
        "127.0.0.1",
        3306,
        "root",
        None,
    )


CLOSED = {
    "postgresql": ("TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"),
    "mariadb": ("TEST_MARIADB_URL", "mysql+aiomysql://root@127.0.0.1:{port}/"),
}


@dataclass(frozen=True)
class Verdict:
    """How an attempt ended: skipped or failed (pytest's outcomes, caught), with the reason."""

    outcome: str
    reason: str


async def verdict_on_new_database(copy: ModuleType, backend: str, tmp_path: Path) -> Verdict:
    """What `new_database` (the first step of the `backend` fixture) does with this copy's
    server URLs: a skip or a failure; reaching a server is an error of the test's own."""
    try:
        url = await copy.new_database(backend, tmp_path)
    except pytest.skip.Exception as exc:
        return Verdict("skipped", str(exc))
    except pytest.fail.Exception as exc:
        return Verdict("failed", str(exc))
    await copy.drop_database(backend, url)  # it reached a server: leave nothing behind
    raise AssertionError(f"{backend}: a database was made at {url!r}, the override was ignored")


def verdict_on_missing_tooling() -> Verdict:
    try:
        tooling_unavailable("pg_createcluster is not installed")
    except pytest.skip.Exception as exc:
        return Verdict("skipped", str(exc))
    except pytest.fail.Exception as exc:
        return Verdict("failed", str(exc))
    raise AssertionError("tooling_unavailable neither skipped nor failed")


@pytest.mark.parametrize("ci", [None, "true"], ids=["laptop", "ci"])
@pytest.mark.parametrize("backend_name", list(CLOSED))
async def test_an_unreachable_backend_is_a_skip_on_a_laptop_and_a_failure_under_ci(
    backend_name: str, ci: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With `TEST_PG_URL` / `TEST_MARIADB_URL` at a closed port the servers at the default
    addresses are not used, and the backend is skipped with "SKIPPED BACKEND: <backend> at
    <host>:<port> is not reachable"; with `CI=true` (as `.ci/run` exports) it is a failure
    instead. Missing fault tooling (the throwaway cluster, PgBouncer) is a skip, or under CI a
    failure, too."""
    if ci:
        assert re.search(r"^export CI=true$", (ROOT / ".ci" / "run").read_text(), re.M)
    port = free_port()
    variable, url = CLOSED[backend_name]
    copy = databases_under(monkeypatch, **{variable: url.format(port=port), "CI": ci})
    verdict = await verdict_on_new_database(copy, backend_name, tmp_path)
    outcome, prefix = ("failed", "CI=true: ") if ci else ("skipped", "SKIPPED BACKEND: ")
    assert verdict.outcome == outcome, verdict
    where = f"{backend_name} at 127.0.0.1:{port}"
    assert verdict.reason.startswith(f"{prefix}{where} is not reachable ("), verdict

    monkeypatch.setattr(cluster, "IN_CI", copy.IN_CI)
    tooling = verdict_on_missing_tooling()
    expected = ("CI=true: " if ci else "") + "SKIPPED FAULT TESTS: "
    assert (tooling.outcome, tooling.reason.startswith(expected)) == (outcome, True), tooling


# ---------------------------------------------------------------------------- overrides


async def test_an_override_reaches_every_route_with_a_dependency(tmp_path: Path) -> None:
    """`app.dependency_overrides` reaches every route of the app that has a dependency: with its
    first dependency overridden by one answering 418, each route answers 418 (the routes
    without a dependency have nothing to override: `GET /users/count`, `GET /posts/{id}`,
    `POST /users`, `POST /auth/refresh`, `/healthz` and the docs). No database is needed: the
    override answers before any statement."""
    state = AppState.build(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"))
    app = create_app(state=state)

    async def refused() -> None:
        raise HTTPException(status_code=418, detail="overridden")

    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.dependant.dependencies]
    assert len(routes) >= 17, [r.path for r in routes]
    try:
        async with client_of(app) as client:
            for route in routes:
                method = sorted((route.methods or set()) - {"HEAD"})[0]
                dependency = route.dependant.dependencies[0].call
                assert dependency is not None
                path = re.sub(r"\{[^}]+\}", "1", route.path)
                app.dependency_overrides[dependency] = refused
                overridden = await client.request(method, path)
                app.dependency_overrides.clear()
                assert (overridden.status_code, overridden.json()) == (
                    418,
                    {"detail": "overridden"},
                ), f"{method} {route.path}: {overridden.status_code} {overridden.text}"
    finally:
        await state.db.dispose()

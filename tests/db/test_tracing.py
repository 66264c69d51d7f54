"""TELEMETRY=true on every backend, with an in-memory exporter: the request's span (FastAPI's
own), one child span per statement the data path sends (BEGIN and COMMIT included), the ORM's
statements through opentelemetry-instrumentation-sqlalchemy, all carrying the request id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.db.database import Database
from asyncblog.log import REQUEST_ID_ATTRIBUTE
from asyncblog.repositories.users import CALLER
from tests.fixtures.app import Api, client_of, empty_tables
from tests.fixtures.databases import Backend

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once: OpenTelemetry allows no second one) exporting
    to memory; the SQLAlchemy instrumentation removed afterwards, so later tests trace nothing."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        SQLAlchemyInstrumentor().uninstrument()
        _EXPORTER.clear()


async def _api(backend: Backend, *, telemetry: bool) -> AsyncIterator[Api]:
    """The app on the real engine (its own `Database`, real commits), with TELEMETRY as given."""
    settings = backend.settings.model_copy(update={"telemetry": telemetry})
    state = AppState.build(settings, Database(backend.engine, settings))
    app = create_app(state=state)
    try:
        async with client_of(app) as client:
            yield Api(client, state)
    finally:
        await state.db.release_idle()
        await empty_tables(backend.engine)


@pytest.fixture
async def traced_api(backend: Backend, spans: InMemorySpanExporter) -> AsyncIterator[Api]:
    async for api in _api(backend, telemetry=True):
        yield api


@pytest.fixture
async def untraced_api(backend: Backend, spans: InMemorySpanExporter) -> AsyncIterator[Api]:
    """The same app with TELEMETRY=false, made while the in-memory provider is the global one."""
    async for api in _api(backend, telemetry=False):
        yield api


def request_span(finished: tuple[ReadableSpan, ...], route: str) -> ReadableSpan:
    (server,) = [
        s
        for s in finished
        if s.kind is SpanKind.SERVER and (s.attributes or {}).get("http.route") == route
    ]
    return server


def descendants(finished: tuple[ReadableSpan, ...], root: ReadableSpan) -> list[ReadableSpan]:
    """The spans under `root` (through any depth), in the order they started."""
    by_id = {s.context.span_id: s for s in finished}

    def under(span: ReadableSpan) -> bool:
        parent = span.parent
        while parent is not None:
            if parent.span_id == root.context.span_id:
                return True
            above = by_id.get(parent.span_id)
            parent = above.parent if above is not None else None
        return False

    return sorted((s for s in finished if under(s)), key=lambda s: s.start_time or 0)


def statements(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [
        s for s in spans if s.kind is SpanKind.CLIENT and "db.query.text" in (s.attributes or {})
    ]


# Statements a transfer sends on the data path, by backend, in one transaction: both rows locked
# in id order, then on PostgreSQL the money moved, the ledger row written and the view returned
# by one statement; on SQLite and MariaDB (no DML in CTEs) an UPDATE and an INSERT.
TRANSFER_OPERATIONS: dict[str, list[str]] = {
    "postgresql": ["BEGIN", "SELECT", "WITH", "COMMIT"],
    "sqlite": ["BEGIN", "SELECT", "UPDATE", "INSERT", "COMMIT"],
    "mariadb": ["BEGIN", "SELECT", "UPDATE", "INSERT", "COMMIT"],
}


async def test_a_transfer_has_one_span_per_statement_under_its_request(
    backend: Backend, traced_api: Api, spans: InMemorySpanExporter
) -> None:
    api = traced_api
    _, admin = await api.admin()
    sender, auth = await api.user()
    recipient = await api.register()
    await api.deposit(admin, sender["id"], "10.00")
    spans.clear()

    response = await api.client.post(
        "/transfers",
        json={"to_user_id": recipient["id"], "amount": "2.50"},
        headers={**auth, "X-Request-ID": "trace-me-1"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["x-request-id"] == "trace-me-1"

    finished = spans.get_finished_spans()
    server = request_span(finished, "/transfers")
    assert (server.attributes or {})[REQUEST_ID_ATTRIBUTE] == "trace-me-1"
    sent = statements(descendants(finished, server))
    operations = [(s.attributes or {})["db.operation.name"] for s in sent]
    assert operations == TRANSFER_OPERATIONS[backend.name], [
        (s.attributes or {})["db.query.text"] for s in sent
    ]
    for span in sent:
        attributes: dict[str, Any] = dict(span.attributes or {})
        assert span.context.trace_id == server.context.trace_id
        assert attributes[REQUEST_ID_ATTRIBUTE] == "trace-me-1"
        assert attributes["db.system.name"] == {"mariadb": "mariadb"}.get(
            backend.name, backend.name
        )
        assert "2.50" not in attributes["db.query.text"]  # the text, never the values
        assert span.name == attributes["db.operation.name"]
    # No statement of the request escaped its trace.
    orphans = [
        s for s in statements(list(finished)) if s.context.trace_id != server.context.trace_id
    ]
    assert orphans == []


async def test_a_failing_statement_is_marked_on_its_span(
    traced_api: Api, spans: InMemorySpanExporter
) -> None:
    api = traced_api
    first = await api.register()
    me, auth = await api.user()
    spans.clear()
    # taken: the UPDATE breaks the unique constraint
    body = {"email": first["email"], "current_password": "password123"}
    response = await api.client.patch(f"/users/{me['id']}", json=body, headers=auth)
    assert response.status_code == 409, response.text
    finished = spans.get_finished_spans()
    server = request_span(finished, "/users/{user_id}")
    failed = [s for s in statements(descendants(finished, server)) if not s.status.is_ok]
    assert failed, "the refused INSERT's span is not marked as an error"
    assert any(event.name == "exception" for event in failed[0].events)


async def test_the_orm_statements_are_traced_under_their_request_too(
    traced_api: Api, spans: InMemorySpanExporter
) -> None:
    api = traced_api
    _, admin = await api.admin()
    spans.clear()
    users = [{"username": "traced_bulk", "email": "tb@example.com", "password": "password123"}]
    response = await api.client.post("/users/bulk", json={"users": users}, headers=admin)
    assert response.status_code == 201, response.text
    finished = spans.get_finished_spans()
    server = request_span(finished, "/users/bulk")
    orm = [
        s
        for s in descendants(finished, server)
        if s.instrumentation_scope is not None
        and s.instrumentation_scope.name == "opentelemetry.instrumentation.sqlalchemy"
    ]

    assert orm, "the bulk import's ORM statements have no span"
    assert any("INSERT" in s.name.upper() for s in orm), [s.name for s in orm]


def operations(finished: tuple[ReadableSpan, ...], route: str) -> list[str]:
    """The data path's statements of the request on `route`, by their first keyword."""
    sent = statements(descendants(finished, request_span(finished, route)))
    return [str((s.attributes or {})["db.operation.name"]) for s in sent]


async def test_the_hot_routes_are_one_statement_each(
    backend: Backend, traced_api: Api, spans: InMemorySpanExporter
) -> None:
    """GET /users/{id} (the user, its first posts, their count) and POST /posts (the caller's
    token checked, the INSERT, the view) each send one statement; on MariaDB the read is two
    (the user with its count, then its posts)."""
    api = traced_api
    user, auth = await api.user()
    spans.clear()
    assert (await api.client.get(f"/users/{user['id']}")).status_code == 200
    created = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=auth)
    assert created.status_code == 201, created.text
    finished = spans.get_finished_spans()
    user_statements = ["SELECT"]
    if backend.name == "mariadb":  # no JSON aggregation there yet: the user, then its posts
        user_statements *= 2
    assert operations(finished, "/users/{user_id}") == user_statements
    assert operations(finished, "/posts") == ["INSERT"]


async def one_transfer(
    api: Api, spans: InMemorySpanExporter
) -> tuple[dict[str, str], dict[str, Any]]:
    """A funded sender, then (the spans cleared) one transfer of 1.00 from it, answered 201;
    the admin's headers and the sender."""
    _, admin = await api.admin()
    sender, auth = await api.user()
    recipient = await api.register()
    await api.deposit(admin, sender["id"], "5.00")
    spans.clear()
    body = {"to_user_id": recipient["id"], "amount": "1.00"}
    assert (await api.client.post("/transfers", json=body, headers=auth)).status_code == 201
    return admin, sender


async def test_the_transfer_locks_both_rows_in_id_order_for_the_update_only(
    backend: Backend, traced_api: Api, spans: InMemorySpanExporter
) -> None:
    """PostgreSQL takes FOR NO KEY UPDATE (a login may insert a refresh token for the user
    meanwhile), MariaDB FOR UPDATE, SQLite nothing (BEGIN IMMEDIATE took the write lock)."""
    api = traced_api
    await one_transfer(api, spans)
    finished = spans.get_finished_spans()
    sent = statements(descendants(finished, request_span(finished, "/transfers")))
    lock = str((sent[1].attributes or {})["db.query.text"])
    assert "ORDER BY users.id" in lock
    clause = {"postgresql": "FOR NO KEY UPDATE", "mariadb": "FOR UPDATE", "sqlite": None}
    expected = clause[backend.name]
    if expected is None:
        assert "FOR " not in lock
        assert str((sent[0].attributes or {})["db.query.text"]) == "BEGIN IMMEDIATE"
    else:
        assert lock.rstrip().endswith(expected), lock


ORM = "opentelemetry.instrumentation.sqlalchemy"


def by_scope(spans: list[ReadableSpan], scope: str) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.instrumentation_scope is not None and s.instrumentation_scope.name == scope
    ]


def orm_statements(finished: tuple[ReadableSpan, ...]) -> list[tuple[str, str]]:
    """The ORM's statements under the one `/users/bulk` request, as (first keyword, text): a
    span's name is its keyword (on SQLite followed by the database's path); `connect` spans are
    checkouts, not statements."""
    under = by_scope(descendants(finished, request_span(finished, "/users/bulk")), ORM)
    return [
        (s.name.split()[0], str((s.attributes or {}).get("db.statement", "")))
        for s in under
        if s.name != "connect"
    ]


def bulk_statements(backend: Backend, rows: int) -> dict[str, list[str]]:
    """What each bulk route sends through its ORM session, for `rows` rows (see the test)."""
    # SQLAlchemy begins SQLite's transactions with a statement (`BEGIN IMMEDIATE`, the engine's
    # "begin" hook), the other drivers implicitly; COMMIT is the driver's commit(), no span.
    begin = ["BEGIN"] if backend.name == "sqlite" else []
    # No RETURNING order SQLAlchemy can rely on without a sentinel column on SQLite: with
    # `sort_by_parameter_order` it sends one INSERT per row there.
    inserts = ["INSERT"] * (rows if backend.name == "sqlite" else 1)
    return {
        "POST": [*begin, "SELECT", *begin, "SAVEPOINT", *inserts, "RELEASE"],
        "PATCH": [*begin, "UPDATE"],
        "DELETE": [*begin, "SELECT", "DELETE"],
    }


async def test_the_bulk_routes_write_with_one_statement_each_but_on_sqlite(
    backend: Backend, traced_api: Api, spans: InMemorySpanExporter
) -> None:
    """Each bulk route checks the admin's token on the data path (one SELECT), then, on its ORM
    session:

    - POST: one SELECT for the conflicts (committed before hashing), then the rows in a
      savepoint: one INSERT ... RETURNING for all of them on PostgreSQL and MariaDB, but one
      INSERT per row on SQLite (the README's "one statement" does not hold there);
    - PATCH: one UPDATE ... WHERE id IN;
    - DELETE: one SELECT locking the named rows in id order (FOR UPDATE; SQLite: BEGIN
      IMMEDIATE took the write lock), then one DELETE ... WHERE id IN of those without money.
    """
    api = traced_api
    _, admin = await api.admin()
    rich = await api.register()
    await api.deposit(admin, rich["id"], "1.00")
    rows = 3
    users = [
        {"username": f"bulk{i}", "email": f"bulk{i}@example.com", "password": "password123"}
        for i in range(rows)
    ]
    sent: dict[str, list[tuple[str, str]]] = {}

    async def bulk(method: str, body: dict[str, Any], status: int = 200) -> Any:
        """One request; its ORM statements go to `sent`."""
        spans.clear()
        response = await api.client.request(method, "/users/bulk", json=body, headers=admin)
        assert response.status_code == status, response.text
        finished = spans.get_finished_spans()
        assert operations(finished, "/users/bulk") == ["SELECT"], method
        sent[method] = orm_statements(finished)
        return response.json()

    created = await bulk("POST", {"users": users}, 201)
    ids = [u["id"] for u in created["created"]]
    updated = await bulk("PATCH", {"ids": ids, "values": {"is_active": False}})
    deleted = await bulk("DELETE", {"ids": [*ids, rich["id"]]})

    assert len(ids) == rows
    assert updated == {"updated": rows}
    assert deleted == {"deleted": rows, "refused": [rich["id"]]}
    operations_sent = {method: [op for op, _ in found] for method, found in sent.items()}
    assert operations_sent == bulk_statements(backend, rows)
    (update,) = [sql for op, sql in sent["PATCH"] if op == "UPDATE"]
    (delete,) = [sql for op, sql in sent["DELETE"] if op == "DELETE"]
    assert "WHERE users.id IN" in update
    assert "WHERE users.id IN" in delete
    (lock,) = [sql for op, sql in sent["DELETE"] if op == "SELECT"]
    assert "ORDER BY users.id" in lock
    assert lock.rstrip().endswith("FOR UPDATE") is (backend.name != "sqlite"), lock


async def test_the_reads_are_one_statement_each(
    backend: Backend, traced_api: Api, spans: InMemorySpanExporter
) -> None:
    """`GET /posts/{id}` (the README's example: one round trip where raw asyncpg makes two),
    `GET /users` and `GET /posts` send one SELECT, which renders the answer, on every backend.
    `GET /transfers` acts for a caller: one short statement checks the token first
    (`services.auth.caller_of`, as the README says of that route), then one SELECT answers."""
    api = traced_api
    _, admin = await api.admin()
    user, auth = await api.user()
    await api.deposit(admin, user["id"], "1.00")
    created = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=auth)
    post_id = created.json()["id"]
    spans.clear()
    for path, headers in [
        (f"/posts/{post_id}", {}),
        ("/users", {}),
        ("/posts", {}),
        ("/transfers", auth),
    ]:
        response = await api.client.get(path, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json(), path  # each answer holds rows, rendered by that one statement
    finished = spans.get_finished_spans()
    for route in ("/posts/{post_id}", "/users", "/posts"):
        assert operations(finished, route) == ["SELECT"], route
    check, history = statements(descendants(finished, request_span(finished, "/transfers")))
    caller_check = CALLER.compiled(backend.engine.dialect).sql
    assert (check.attributes or {})["db.query.text"] == caller_check
    assert (history.attributes or {})["db.operation.name"] == "SELECT"


async def test_without_telemetry_nothing_is_traced(
    untraced_api: Api, spans: InMemorySpanExporter
) -> None:
    """TELEMETRY=false (the default), with a global tracer provider that records everything:
    a transfer (BEGIN, the lock, the move, COMMIT), a read and an ORM bulk import leave no
    span, neither FastAPI's request and operation spans nor one per statement."""
    api = untraced_api
    admin, sender = await one_transfer(api, spans)
    assert (await api.client.get(f"/users/{sender['id']}")).status_code == 200
    users = [{"username": "untraced", "email": "untraced@example.com", "password": "password123"}]
    bulk = await api.client.post("/users/bulk", json={"users": users}, headers=admin)
    assert bulk.status_code == 201, bulk.text
    assert spans.get_finished_spans() == ()
    # the provider records: a span started now is exported
    with trace.get_tracer("test").start_as_current_span("probe"):
        pass
    assert [s.name for s in spans.get_finished_spans()] == ["probe"]

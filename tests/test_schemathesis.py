"""Schemathesis against the app's own OpenAPI description (GET /openapi.json), in process.

For every operation, Hypothesis draws requests from the schema (valid ones, and invalid ones in
"negative" mode) and sends them to the app; every response must pass these checks:

- not_a_server_error: never a 5xx (API.md: "Never a 500 for anything a client can cause");
- status_code_conformance: the status is one the schema documents for that operation;
- content_type_conformance, response_headers_conformance, response_schema_conformance: the
  response matches what the schema says about that status.

How it runs: the schema is loaded with `schemathesis.openapi.from_asgi`. The requests are
prepared by schemathesis's own serializer (the exact bytes it would send) and sent with an async
httpx client to an app on the test's database connection, as in every other API test. (Schemathesis'
own ASGI transport is a synchronous Starlette TestClient that runs the app on another event loop,
where the test's connection, bound to this loop, cannot be used.) Each example runs inside a
SAVEPOINT that is rolled back afterwards, and the test's outer transaction is rolled back at the
end, so nothing leaks between examples or tests. Requests are sent as an admin, as a plain user,
or anonymously, and path ids are either generated or the ids of rows that exist.

All three backends: at 25 examples per operation and mode this takes well under 60 s per
backend, and the database is where backend-specific 5xx come from (a value out of range for
one database only, NUL bytes on PostgreSQL, ...), so a SQLite-only run would miss the point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncblog.api.app import create_app
from tests.fixtures.app import Api
from tests.fixtures.databases import settings_for

MAX_EXAMPLES = 25
BASE_URL = "http://test"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# The schema comes from the app itself; its content does not depend on the database.
SCHEMA = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(settings_for("sqlite+aiosqlite:///:memory:"))
)
OPERATIONS: dict[str, APIOperation[Any, Any, Any, Any]] = {}
for result in SCHEMA.get_all_operations():
    assert isinstance(result, Ok), result.err()  # the app's own schema is valid
    OPERATIONS[result.ok().label] = result.ok()


@dataclasses.dataclass
class World:
    """Rows that exist during the test, and who may call."""

    api: Api
    identities: dict[str, dict[str, str]]  # name -> headers
    path_ids: dict[str, list[int]]  # path parameter -> existing ids
    usernames: list[str]


@pytest.fixture
async def world(api: Api) -> World:
    admin, admin_headers = await api.admin()
    user, user_headers = await api.user()
    rich, rich_headers = await api.user()
    await api.deposit(admin_headers, rich["id"], "100.00")
    post = await api.client.post(
        "/posts", json={"title": "a post", "content": "its content"}, headers=user_headers
    )
    assert post.status_code == 201
    return World(
        api=api,
        identities={
            "admin": admin_headers,
            "user": user_headers,
            "rich": rich_headers,
            "anonymous": {},
        },
        path_ids={
            "user_id": [admin["id"], user["id"], rich["id"]],
            "post_id": [post.json()["id"]],
        },
        usernames=[admin["username"], user["username"], rich["username"]],
    )


@pytest.fixture
def examples_run() -> Iterator[list[str]]:
    """Proves that Hypothesis really ran the async test body (an operation with few distinct
    inputs, such as GET /healthz, legitimately ends before MAX_EXAMPLES)."""
    runs: list[str] = []
    yield runs
    assert runs, "no example ran"


def prepare(case: Any, headers: dict[str, str]) -> requests.PreparedRequest:
    """The request exactly as schemathesis would send it (its own serialization)."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
    kwargs.pop("cookies", None)
    try:
        return requests.Request(**kwargs).prepare()
    except (ValueError, requests.exceptions.InvalidHeader):  # not expressible on the wire
        assume(False)
        raise


async def send(client: httpx.AsyncClient, prepared: requests.PreparedRequest) -> httpx.Response:
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    assert body is None or isinstance(body, bytes)  # requests made it from bytes, str or JSON
    try:
        return await client.request(
            prepared.method or "GET",
            prepared.url or BASE_URL,
            content=body,
            headers=cast(dict[str, str], dict(prepared.headers)),  # schemathesis's str headers
        )
    except (UnicodeEncodeError, httpx.InvalidURL, httpx.LocalProtocolError):
        assume(False)  # a header or URL httpx will not put on the wire
        raise


async def run_example(
    world: World, connection: AsyncConnection, case: Any, identity: str
) -> httpx.Response:
    prepared = prepare(case, world.identities[identity])
    savepoint = await connection.begin_nested()
    try:
        response = await send(world.api.client, prepared)
    finally:
        await savepoint.rollback()
    case.validate_response(response, checks=CHECKS, headers=dict(prepared.headers))
    return response


def negatable(operation: Any) -> bool:
    """Whether the operation has anything a negative example could make invalid."""
    parts = (operation.body, operation.query, operation.path_parameters, operation.headers)
    return any(len(part) for part in parts)


MODES = [
    pytest.param(label, mode, id=f"{label}-{mode.value}")
    for label, operation in OPERATIONS.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or negatable(operation)
]


@pytest.mark.parametrize(("label", "mode"), MODES)
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
async def test_operation_conforms_to_its_schema(
    world: World,
    connection: AsyncConnection,
    examples_run: list[str],
    label: str,
    mode: GenerationMode,
    data: st.DataObject,
) -> None:
    operation = OPERATIONS[label]
    identity = data.draw(st.sampled_from(sorted(world.identities)), label="identity")
    path_parameters = None
    names = [p.name for p in operation.path_parameters]
    if len(names) > 0 and data.draw(st.booleans(), label="existing ids"):
        path_parameters = {
            name: data.draw(st.sampled_from(world.path_ids[name]), label=name) for name in names
        }
    case = data.draw(
        operation.as_strategy(generation_mode=mode, path_parameters=path_parameters),
        label="case",
    )
    examples_run.append(label)
    await run_example(world, connection, case, identity)


# ------------------------------------------------------------------ directed, known answers
# Requests that random generation rarely hits (they need ids that exist and a particular
# relation between them), checked with the same schemathesis checks.


def directed(world: World) -> list[tuple[str, str, dict[str, Any], str, int]]:
    """(operation, identity, Case arguments, why, expected status)."""
    _, user, rich = world.path_ids["user_id"]
    post = world.path_ids["post_id"][0]
    return [
        (
            "POST /transfers",
            "rich",
            {"body": {"to_user_id": rich, "amount": "1.00"}},
            "transfer to oneself",
            422,
        ),
        (
            "POST /transfers",
            "user",
            {"body": {"to_user_id": rich, "amount": "1.00"}},
            "insufficient balance",
            409,
        ),
        (
            "POST /transfers",
            "rich",
            {"body": {"to_user_id": user, "amount": "1.00"}},
            "a transfer",
            201,
        ),
        (
            "POST /transfers",
            "rich",
            {"body": {"to_user_id": user, "amount": "1.00"}, "headers": {"Idempotency-Key": "k"}},
            "a transfer with a key",
            201,
        ),
        (
            "POST /admin/users/{user_id}/deposit",
            "admin",
            {"path_parameters": {"user_id": 2_147_483_647}, "body": {"amount": "1.00"}},
            "deposit to nobody",
            404,
        ),
        (
            "POST /admin/users/{user_id}/deposit",
            "user",
            {"path_parameters": {"user_id": user}, "body": {"amount": "1.00"}},
            "deposit by a non-admin",
            403,
        ),
        (
            "PATCH /posts/{post_id}",
            "rich",
            {"path_parameters": {"post_id": post}, "body": {"title": "mine now"}},
            "someone else's post",
            403,
        ),
        (
            "PATCH /users/{user_id}",
            "user",
            {"path_parameters": {"user_id": user}, "body": {"is_active": False}},
            "a user setting is_active",
            403,
        ),
        (
            "POST /users",
            "anonymous",
            {
                "body": {
                    "username": world.usernames[1].upper(),
                    "email": "new@example.com",
                    "password": "password123",
                }
            },
            "a username taken in another case",
            409,
        ),
        (
            "GET /users/{user_id}",
            "anonymous",
            {"path_parameters": {"user_id": user}, "headers": {"Authorization": "Bearer nope"}},
            "an invalid token on an optional-auth route",
            401,
        ),
        (
            "GET /users",
            "anonymous",
            {"headers": {"Authorization": "Bearer nope"}},
            "an invalid token on the optional-auth list",
            401,
        ),
        (
            "DELETE /users/{user_id}",
            "user",
            {"path_parameters": {"user_id": rich}},
            "deleting another user",
            403,
        ),
        (
            "GET /users/{user_id}",
            "user",
            {"path_parameters": {"user_id": user}},
            "one's own private view with posts",
            200,
        ),
        ("GET /users", "admin", {"query": {"limit": 5}}, "private views for an admin", 200),
        (
            "POST /users/bulk",
            "admin",
            {
                "body": {
                    "users": [
                        {"username": "bulk1", "email": "b@example.com", "password": "password123"}
                    ]
                    * 2
                }
            },
            "bulk conflict inside the request",
            409,
        ),
        (
            "POST /auth/token",
            "anonymous",
            {"body": {"username": "nobody", "password": "password123"}},
            "wrong credentials",
            401,
        ),
    ]


async def test_directed_requests_conform_to_the_schema(
    world: World, connection: AsyncConnection
) -> None:
    failures = []
    for label, identity, arguments, why, expected in directed(world):
        operation = OPERATIONS[label]
        headers = {**world.identities[identity], **arguments.pop("headers", {})}
        case = operation.Case(headers=headers, **arguments)
        prepared = prepare(case, {})
        savepoint = await connection.begin_nested()
        try:
            response = await send(world.api.client, prepared)
        finally:
            await savepoint.rollback()
        assert response.status_code == expected, (why, response.status_code, response.text)
        try:
            case.validate_response(response, checks=CHECKS, headers=dict(prepared.headers))
        except BaseExceptionGroup as exc:  # schemathesis.core.failures.FailureGroup
            failures.append(f"{label} ({why}) -> {response.status_code} {response.text}\n{exc}")
    assert not failures, "\n\n".join(failures)


async def test_schema_describes_every_route(api: Api) -> None:
    """API.md: /openapi.json describes every route of the contract."""
    expected = {
        "GET /healthz", "GET /readyz", "POST /auth/token", "POST /auth/refresh",
        "POST /auth/logout",
        "POST /users", "GET /users", "GET /users/count", "GET /users/me",
        "GET /users/{user_id}", "PATCH /users/{user_id}", "DELETE /users/{user_id}",
        "POST /users/bulk", "PATCH /users/bulk", "DELETE /users/bulk",
        "POST /posts", "GET /posts", "GET /posts/{post_id}", "PATCH /posts/{post_id}",
        "DELETE /posts/{post_id}",
        "POST /transfers", "GET /transfers", "POST /admin/users/{user_id}/deposit",
    }  # fmt: skip
    assert set(OPERATIONS) == expected
    served = (await api.client.get("/openapi.json")).json()
    labels = {f"{m.upper()} {p}" for p, ops in served["paths"].items() for m in ops}
    assert labels == expected

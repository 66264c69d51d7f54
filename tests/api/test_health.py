"""Operations: liveness, readiness, the OpenAPI description, request ids and the last-resort 500."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from tests.fixtures.app import Api, client_of
from tests.fixtures.databases import settings_for

# Every route of API.md, as (method, path) with path parameters written `{}`.
CONTRACT_ROUTES = {
    ("POST", "/auth/token"),
    ("POST", "/users"),
    ("GET", "/users"),
    ("GET", "/users/count"),
    ("GET", "/users/me"),
    ("GET", "/users/{}"),
    ("PATCH", "/users/{}"),
    ("DELETE", "/users/{}"),
    ("POST", "/users/bulk"),
    ("PATCH", "/users/bulk"),
    ("DELETE", "/users/bulk"),
    ("POST", "/posts"),
    ("GET", "/posts"),
    ("GET", "/posts/{}"),
    ("PATCH", "/posts/{}"),
    ("DELETE", "/posts/{}"),
    ("POST", "/transfers"),
    ("GET", "/transfers"),
    ("POST", "/admin/users/{}/deposit"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    # A SQLite file in a directory that does not exist cannot be opened.
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'nowhere.db'}"
    state = AppState.build(settings_for(url))
    try:
        app = create_app(state=state)
        async with client_of(app) as client:
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["database"] != "ok"
            # Liveness does not depend on the database.
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await state.db.dispose()


async def test_openapi_describes_every_route_of_the_contract(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    documented = {
        (method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
        for path, operations in schema["paths"].items()
        for method in operations
        if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}
    }
    missing = CONTRACT_ROUTES - documented
    assert not missing, f"routes of API.md missing from /openapi.json: {sorted(missing)}"


async def test_every_documented_route_exists(client: httpx.AsyncClient) -> None:
    """The description is not just paper: each contract route answers something other than 404
    or 405 (an id that does not exist is allowed to be a 404 with a domain message)."""
    for method, path in sorted(CONTRACT_ROUTES):
        concrete = path.replace("{}", "999999")
        response = await client.request(method, concrete)
        assert response.status_code != 405, (method, path)
        if response.status_code == 404:
            assert response.json()["detail"] in ("User not found", "Post not found"), (
                method,
                path,
            )


async def test_docs(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()
    assert "/openapi.json" in response.text


# ---------------------------------------------------------------------------- request ids


async def test_every_response_carries_a_request_id(api: Api) -> None:
    _, headers = await api.user()
    responses = [
        await api.client.get("/healthz"),
        await api.client.get("/readyz"),
        await api.client.get("/users"),
        await api.client.get("/users/me", headers=headers),
        await api.client.get("/posts/999999"),  # 404
        await api.client.get("/posts", params={"limit": 0}),  # 422
        await api.client.post("/posts", json={"title": "t", "content": "c"}),  # 401
        await api.client.get("/no-such-route"),  # router 404
        await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=headers),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 404, 422, 401, 404, 201]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids), "each request gets its own id"


@pytest.mark.parametrize("incoming", ["abc-123", "7f3c2a9e1b4d4e0f8a6b5c4d3e2f1a0b", "req.42_x"])
async def test_a_sane_incoming_request_id_is_echoed(
    client: httpx.AsyncClient, incoming: str
) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": incoming})
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == [incoming]


@pytest.mark.parametrize(
    "incoming", ["<script>alert(1)</script>", "has space", "x" * 500, "semi;colon"]
)
async def test_an_unsafe_incoming_request_id_is_replaced(
    client: httpx.AsyncClient, incoming: str
) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": incoming})
    assert response.status_code == 200
    echoed = response.headers.get_list("x-request-id")
    assert len(echoed) == 1
    assert echoed[0] and echoed[0] != incoming


# ---------------------------------------------------------------------------- 500


@pytest.fixture
async def failing_client(state: AppState) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(state=state)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    @app.post("/boom-after-reading")
    async def boom_after_reading(payload: dict[str, str]) -> None:
        raise RuntimeError(f"secret detail {payload}")

    async with client_of(app) as client:
        yield client


async def test_unhandled_exception_is_a_bare_json_500(failing_client: httpx.AsyncClient) -> None:
    response = await failing_client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": "Internal server error"}
    assert "secret detail" not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text
    assert all("secret" not in value for value in response.headers.values())
    assert response.headers.get("x-request-id")


async def test_unhandled_exception_echoes_the_request_id(failing_client: httpx.AsyncClient) -> None:
    response = await failing_client.post(
        "/boom-after-reading", json={"a": "b"}, headers={"X-Request-ID": "trace-me-500"}
    )
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert response.headers.get_list("x-request-id") == ["trace-me-500"]


async def test_app_keeps_working_after_an_unhandled_exception(
    failing_client: httpx.AsyncClient,
) -> None:
    assert (await failing_client.get("/boom")).status_code == 500
    response = await failing_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}

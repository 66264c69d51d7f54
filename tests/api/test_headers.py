"""Response headers: security headers and X-Request-ID on every response, whatever its status
(including the 413 of an oversized body and the last-resort 500), and CORS closed unless origins
are configured (CORS_ORIGINS), then open for exactly those origins."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from tests.fixtures.app import Api, client_of
from tests.fixtures.databases import Backend, settings_for

SMALL_LIMIT = 4096
REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
SAFE_REFERRER_POLICIES = {
    "no-referrer",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
}
APP_ORIGIN = "https://app.example"


@asynccontextmanager
async def app_with(
    backend: Backend, state: AppState, **overrides: Any
) -> AsyncIterator[tuple[Api, FastAPI]]:
    """An app from settings with `overrides`, on the test's own rolled-back transaction, plus a
    route that fails with an unhandled exception (to reach the last-resort 500)."""
    own = AppState.build(settings_for(backend.url, **overrides), state.db)
    app = create_app(state=own)

    async def boom() -> None:
        raise RuntimeError("an unexpected failure inside a handler")

    app.add_api_route("/test-only/boom", boom, methods=["GET"])
    async with client_of(app) as client:
        yield Api(client, own), app


def assert_security_headers(response: httpx.Response, *, api_route: bool = True) -> None:
    label = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    headers = response.headers

    def one(name: str) -> str:
        values = headers.get_list(name)
        assert len(values) == 1, f"{label}: {name} = {values}"
        return values[0]

    assert one("X-Content-Type-Options") == "nosniff", label
    assert one("X-Frame-Options") == "DENY", label
    assert one("Referrer-Policy") in SAFE_REFERRER_POLICIES, label
    hsts = one("Strict-Transport-Security")
    max_age = re.search(r"max-age=(\d+)", hsts)
    assert max_age is not None and int(max_age.group(1)) >= 15_552_000, (label, hsts)  # >= 180 d
    if api_route:
        csp = one("Content-Security-Policy")
        directives = {d.strip() for d in csp.split(";")}
        assert "default-src 'none'" in directives, (label, csp)
        assert "frame-ancestors 'none'" in directives, (label, csp)
    rid = one("X-Request-ID")
    assert REQUEST_ID.match(rid), (label, rid)


Request = Callable[[Api], Awaitable[httpx.Response]]


async def created_post(api: Api) -> tuple[dict[str, str], int]:
    _, headers = await api.user()
    response = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=headers)
    assert response.status_code == 201
    return headers, response.json()["id"]


async def ok(api: Api) -> httpx.Response:
    return await api.client.get("/healthz")


async def ok_from_database(api: Api) -> httpx.Response:
    return await api.client.get("/users/count")


async def created(api: Api) -> httpx.Response:
    body = {"username": "headers", "email": "headers@example.com", "password": "password123"}
    return await api.client.post("/users", json=body)


async def no_content(api: Api) -> httpx.Response:
    headers, post_id = await created_post(api)
    return await api.client.delete(f"/posts/{post_id}", headers=headers)


async def bad_request(api: Api) -> httpx.Response:
    return await api.client.post(
        "/users", content=b"[" * 3000, headers={"content-type": "application/json"}
    )


async def unauthorized(api: Api) -> httpx.Response:
    return await api.client.get("/users/me")


async def bad_token(api: Api) -> httpx.Response:
    return await api.client.get("/users/me", headers={"Authorization": "Bearer not.a.token"})


async def forbidden(api: Api) -> httpx.Response:
    _, headers = await api.user()
    return await api.client.request("DELETE", "/users/bulk", json={"ids": [1]}, headers=headers)


async def not_found(api: Api) -> httpx.Response:
    return await api.client.get("/posts/999999")


async def method_not_allowed(api: Api) -> httpx.Response:
    return await api.client.put("/posts", json={})


async def conflict(api: Api) -> httpx.Response:
    user = await api.register()
    body = {"username": user["username"], "email": "other@example.com", "password": "password123"}
    return await api.client.post("/users", json=body)


async def unprocessable(api: Api) -> httpx.Response:
    return await api.client.get("/posts", params={"limit": 0})


async def too_large_declared(api: Api) -> httpx.Response:
    return await api.client.post(
        "/users", content=b"x" * (SMALL_LIMIT + 1), headers={"content-type": "application/json"}
    )


async def too_large_streamed(api: Api) -> httpx.Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * SMALL_LIMIT

    return await api.client.post(
        "/users", content=chunks(), headers={"content-type": "application/json"}
    )


async def too_many(api: Api) -> httpx.Response:
    for _ in range(api.state.settings.login_max_failures):
        await api.client.post("/auth/token", data={"username": "someone", "password": "wrong-pw"})
    return await api.client.post("/auth/token", data={"username": "someone", "password": "x"})


async def server_error(api: Api) -> httpx.Response:
    return await api.client.get("/test-only/boom")


async def openapi(api: Api) -> httpx.Response:
    return await api.client.get("/openapi.json")


CASES: dict[str, tuple[Request, int]] = {
    "200": (ok, 200),
    "200 from the database": (ok_from_database, 200),
    "201": (created, 201),
    "204": (no_content, 204),
    "400 unparseable body": (bad_request, 400),
    "401 no token": (unauthorized, 401),
    "401 bad token": (bad_token, 401),
    "403": (forbidden, 403),
    "404": (not_found, 404),
    "405": (method_not_allowed, 405),
    "409": (conflict, 409),
    "422": (unprocessable, 422),
    "413 declared length": (too_large_declared, 413),
    "413 streamed": (too_large_streamed, 413),
    "429": (too_many, 429),
    "500": (server_error, 500),
    "openapi.json": (openapi, 200),
}


@pytest.mark.parametrize(("request_", "status"), CASES.values(), ids=CASES.keys())
async def test_security_headers_on_every_response(
    backend: Backend, state: AppState, request_: Request, status: int
) -> None:
    async with app_with(backend, state, max_body_bytes=SMALL_LIMIT) as (api, _):
        response = await request_(api)
        assert response.status_code == status, response.text[:300]
        assert_security_headers(response)
        if status >= 400:
            # Errors are JSON `{"detail": ...}` (API.md), whichever layer produced them.
            assert response.headers.get("content-type", "").startswith("application/json")
            assert response.json()["detail"]


async def test_server_error_says_nothing_about_the_cause(backend: Backend, state: AppState) -> None:
    async with app_with(backend, state) as (api, _):
        response = await api.client.get("/test-only/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert "RuntimeError" not in response.text and "unexpected" not in response.text


async def test_docs_page_has_the_security_headers(api: Api) -> None:
    response = await api.client.get("/docs")
    assert response.status_code == 200
    # The docs pages carry their own policy (tests/api/test_docs.py); everything else is the
    # same as on API routes.
    assert_security_headers(response, api_route=False)
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


# ---------------------------------------------------------------------------- X-Request-ID


async def test_request_id_is_generated_and_unique(api: Api) -> None:
    ids = [(await api.client.get("/healthz")).headers["X-Request-ID"] for _ in range(5)]
    assert len(set(ids)) == 5
    for rid in ids:
        assert REQUEST_ID.match(rid) and len(rid) >= 16, rid


@pytest.mark.parametrize("sane", ["abc-123_X.y", "a" * 64, "0"])
async def test_sane_client_request_id_is_echoed(api: Api, sane: str) -> None:
    for response in (
        await api.client.get("/healthz", headers={"X-Request-ID": sane}),
        await api.client.get("/users/me", headers={"X-Request-ID": sane}),
    ):
        assert response.headers.get_list("X-Request-ID") == [sane]


@pytest.mark.parametrize(
    "insane",
    [
        "",
        "has space",
        "a" * 65,
        "<script>alert(1)</script>",
        "id;drop",
        "caf\u00e9",
        "a/b",
        "%0d%0a",
    ],
)
async def test_unsafe_client_request_id_is_replaced(api: Api, insane: str) -> None:
    response = await api.client.get("/healthz", headers={b"X-Request-ID": insane.encode("latin-1")})
    echoed = response.headers.get_list("X-Request-ID")
    assert len(echoed) == 1
    assert echoed[0] != insane
    assert REQUEST_ID.match(echoed[0])


# ------------------------------------------------------------------------------------ CORS


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {
        k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")
    }


def preflight(
    origin: str, method: str = "POST", headers: str = "authorization,content-type"
) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_cors_is_closed_by_default(api: Api) -> None:
    assert api.state.settings.cors_origins == []
    for origin in (APP_ORIGIN, "https://evil.example", "null"):
        response = await api.client.options("/posts", headers=preflight(origin))
        assert not (200 <= response.status_code < 300), response.status_code
        assert cors_headers(response) == {}, origin
        assert_security_headers(response)
        response = await api.client.get("/posts", headers={"Origin": origin})
        assert response.status_code == 200
        assert cors_headers(response) == {}, origin


async def test_cors_is_open_only_for_configured_origins(backend: Backend, state: AppState) -> None:
    async with app_with(backend, state, cors_origins=[APP_ORIGIN]) as (api, _):
        response = await api.client.options("/posts", headers=preflight(APP_ORIGIN))
        assert response.status_code == 200, response.text
        allowed = cors_headers(response)
        assert allowed["access-control-allow-origin"] == APP_ORIGIN
        assert "POST" in allowed["access-control-allow-methods"]
        granted = {h.strip().lower() for h in allowed["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type"} <= granted
        assert_security_headers(response)

        _, headers = await api.user()
        response = await api.client.post(
            "/posts", json={"title": "t", "content": "c"}, headers={**headers, "Origin": APP_ORIGIN}
        )
        assert response.status_code == 201
        assert response.headers.get("access-control-allow-origin") == APP_ORIGIN
        assert "origin" in response.headers.get("vary", "").lower()

        others = [
            "https://evil.example",
            "https://app.example.evil.example",
            "https://evil-app.example",
            "http://app.example",  # another scheme is another origin
            "https://app.example:8443",
            "null",
        ]
        for origin in others:
            response = await api.client.options("/posts", headers=preflight(origin))
            assert response.status_code >= 400, (origin, response.status_code)
            assert "access-control-allow-origin" not in cors_headers(response), origin
            response = await api.client.get("/posts", headers={"Origin": origin})
            assert response.status_code == 200
            assert "access-control-allow-origin" not in cors_headers(response), origin

        # The allowed origin gets only the configured methods and headers.
        for hostile in (
            preflight(APP_ORIGIN, method="PUT"),
            preflight(APP_ORIGIN, headers="x-evil"),
        ):
            response = await api.client.options("/posts", headers=hostile)
            assert response.status_code == 400, (hostile, response.status_code)
        # Never a wildcard.
        assert all(
            r.headers.get("access-control-allow-origin") != "*"
            for r in [await api.client.get("/healthz", headers={"Origin": APP_ORIGIN})]
        )

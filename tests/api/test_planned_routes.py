"""`api.routing.PlannedRoute`: the routes resolve their parameters from a plan made once, and
answer exactly what FastAPI's own handler answers, for good requests and bad ones alike."""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Response
from fastapi.routing import APIRoute

from asyncblog.api.app import create_app
from asyncblog.api.routing import PlannedRoute, plan_requests, plans_requests, service_router
from asyncblog.api.state import AppState
from asyncblog.config import Settings
from tests.fixtures.app import Api, client_of

# The routes FastAPI still resolves itself, and why: a `yield` dependency (the bulk session),
# form data (login), a `Response` parameter (refresh sets a cookie), a model returned for
# FastAPI to render (health, count, bulk).
FASTAPIS = {
    ("GET", "/users/count"),
    ("POST", "/users/bulk"),
    ("PATCH", "/users/bulk"),
    ("DELETE", "/users/bulk"),
    ("POST", "/auth/token"),
    ("POST", "/auth/refresh"),
    ("GET", "/healthz"),
}


def _planned(route: PlannedRoute) -> bool:
    return getattr(route.app, "__qualname__", "").startswith("_planned_app")


def test_every_route_that_returns_its_response_is_planned() -> None:
    app = create_app()
    routes = [route for route in app.router.routes if isinstance(route, PlannedRoute)]
    by_kind: dict[bool, set[tuple[str, str]]] = {True: set(), False: set()}
    for route in routes:
        for method in route.methods or ():
            by_kind[_planned(route)].add((method, route.path))
    assert by_kind[False] == FASTAPIS
    assert {("GET", "/posts/{post_id}"), ("POST", "/transfers")} <= by_kind[True]
    assert by_kind[True] >= DOCS_PAGES  # the app's own routes are made as planned ones too
    assert len(by_kind[True]) == 16 + len(DOCS_PAGES)


DOCS_PAGES = {("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")}


def _layers(app: FastAPI) -> list[str]:
    """The classes of the app's ASGI stack, outermost first, down to the router."""
    names = []
    layer: Any = app.build_middleware_stack()
    while layer is not None and app.router not in (layer, getattr(layer, "__self__", None)):
        names.append(type(layer).__name__)
        layer = getattr(layer, "app", None)
    assert layer is not None  # the router (or its own stack) is reached
    return names


LEAN = ["RequestContextMiddleware", "ExceptionHandlers"]


def test_the_stack_has_only_the_layers_a_planned_request_needs() -> None:
    """FastAPI's own layers (last-resort 500, telemetry hook, body limit, files' exit stack)
    come back wherever one of them has work to do."""
    assert _layers(create_app(Settings())) == LEAN
    full = _layers(create_app(Settings(telemetry=True)))
    assert full[0] == "ServerErrorMiddleware"
    assert {"ExceptionTelemetryMiddleware", "AsyncExitStackMiddleware"} <= set(full)

    async def plain() -> dict[str, int]:
        return {}

    foreign = create_app(Settings())
    foreign.include_router(APIRouter(), prefix="/x")  # a nested router
    assert _layers(foreign) != LEAN
    foreign = create_app(Settings())
    foreign.router.routes.append(APIRoute("/plain", plain))  # FastAPI's own route class
    assert "AsyncExitStackMiddleware" in _layers(foreign)
    foreign = create_app(Settings())
    foreign.add_exception_handler(500, lambda request, exc: Response(status_code=500))
    assert _layers(foreign)[0] == "ServerErrorMiddleware"


def test_what_the_plan_does_not_cover_is_left_to_fastapi() -> None:
    """A route is planned only with parameters the plan reads as FastAPI does: an aliased or
    repeated query parameter, a sync dependency, or a model returned make it FastAPI's."""
    router = service_router()

    async def plain(n: int = 1, if_match: Annotated[str | None, Header()] = None) -> Response:
        return Response()

    async def aliased(n: Annotated[int, Query(alias="m")] = 1) -> Response:
        return Response()

    async def repeated(n: Annotated[list[int] | None, Query()] = None) -> Response:
        return Response()

    def sync_dependency() -> int:
        return 1

    async def with_sync(n: Annotated[int, Depends(sync_dependency)]) -> Response:
        return Response()

    async def a_model() -> dict[str, int]:
        return {}

    for endpoint in (plain, aliased, repeated, with_sync, a_model):
        router.add_api_route(f"/{endpoint.__name__}", endpoint)
    routes = [cast(PlannedRoute, route) for route in router.routes]
    assert {route.path for route in routes if _planned(route)} == {"/plain"}


async def test_a_route_is_found_under_a_prefix_or_a_root_path() -> None:
    """`PlannedRoute.matches` refuses a path that does not start as the route's does; under an
    included router's prefix or a root path it leaves the matching to FastAPI."""
    router = service_router()

    @router.get("/items/{n}")
    async def item(n: int) -> Response:
        return Response(str(n))

    included = FastAPI()
    included.include_router(router, prefix="/v1")
    async with client_of(included) as client:
        assert (await client.get("/v1/items/3")).text == "3"
        assert (await client.get("/items/3")).status_code == 404
    direct = FastAPI()
    direct.router.routes.extend(router.routes)
    transport = httpx.ASGITransport(app=direct, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/api/items/4")).text == "4"
        assert (await client.get("/api/other/4")).status_code == 404


def test_with_fastapis_telemetry_every_request_goes_to_fastapi() -> None:
    assert plans_requests(create_app(Settings()))
    assert not plans_requests(create_app(Settings(telemetry=True)))


# What differs between two answers to the same write: the new row's id and times.
MASKED = {"id", "created_at", "updated_at", "transfer_id"}


def _comparable(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    try:
        body: Any = response.json()
    except json.JSONDecodeError:
        body = response.text
    if response.status_code in (200, 201) and isinstance(body, dict):
        body = {key: ("*" if key in MASKED else value) for key, value in body.items()}
    headers = {
        name: value
        for name, value in response.headers.items()
        if name not in ("x-request-id", "content-length", "etag")
    }
    return response.status_code, body, headers


async def test_planned_and_fastapi_answer_alike(api: Api, state: AppState) -> None:
    """Each request is sent to two apps on the same data, one planning (the default) and one
    whose every request goes to FastAPI's handler: same status, body and headers."""
    author, auth = await api.user()
    _, admin = await api.admin()
    await api.deposit(admin, author["id"], "10.00")
    other = await api.register()
    created = await api.client.post("/posts", json={"title": "t", "content": "c"}, headers=auth)
    post = created.json()
    user_url = f"/users/{author['id']}"
    json_type = {"content-type": "application/json"}
    keys = iter(range(1_000_000))

    def fresh(case: dict[str, Any]) -> dict[str, Any]:
        """The case with a new idempotency key where it asks for one (`{key}`)."""
        headers = {
            name: value.replace("{key}", f"key-{next(keys)}")
            for name, value in case.get("headers", {}).items()
        }
        return {**case, "headers": headers}

    def transfer(amount: Any, **headers: str) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": "/transfers",
            "json": {"to_user_id": other["id"], "amount": amount},
            "headers": {**auth, **headers},
        }

    a_post = {"title": "a", "content": "b"}

    a_post_bytes = json.dumps(a_post).encode()

    def post_as(content_type: str) -> dict[str, Any]:
        """`a_post` by the caller, as raw bytes with this content type."""
        headers = {**auth, "content-type": content_type}
        return {"method": "POST", "url": "/posts", "content": a_post_bytes, "headers": headers}

    cases: list[dict[str, Any]] = [
        {"method": "GET", "url": f"/posts/{post['id']}"},
        {"method": "GET", "url": "/posts/999999"},
        {"method": "GET", "url": "/posts/abc"},
        {"method": "GET", "url": "/posts/0"},
        {"method": "GET", "url": "/posts/-1"},
        {"method": "GET", "url": "/posts/99999999999"},
        {"method": "GET", "url": "/posts/1.5"},
        {"method": "GET", "url": f"/users/{author['id']}"},
        {"method": "GET", "url": f"/users/{author['id']}", "headers": auth},
        {"method": "GET", "url": user_url, "headers": {"Authorization": "Bearer x"}},
        {"method": "GET", "url": user_url, "headers": {"Authorization": "Basic x"}},
        {"method": "GET", "url": "/users/me", "headers": auth},
        {"method": "GET", "url": "/users/me"},
        {"method": "GET", "url": "/users?limit=1"},
        {"method": "GET", "url": "/users?limit=0"},
        {"method": "GET", "url": "/users?limit=abc"},
        {"method": "GET", "url": "/users?limit=2&limit=1"},
        {"method": "GET", "url": "/users?limit="},
        {"method": "GET", "url": "/users?after_id=-1"},
        {"method": "GET", "url": "/users?skip=1&after_id=0"},
        {"method": "GET", "url": "/users?unknown=1"},
        {"method": "GET", "url": f"/posts?author_id={author['id']}"},
        {"method": "GET", "url": "/posts?author_id=0"},
        {"method": "GET", "url": "/transfers", "headers": auth},
        {"method": "GET", "url": "/transfers?limit=500", "headers": auth},
        {"method": "POST", "url": "/posts", "json": a_post, "headers": auth},
        {"method": "POST", "url": "/posts", "json": a_post},
        {"method": "POST", "url": "/posts", "json": {"title": "", "content": "b"}, "headers": auth},
        {"method": "POST", "url": "/posts", "json": {"title": "a"}, "headers": auth},
        {"method": "POST", "url": "/posts", "json": ["a"], "headers": auth},
        {"method": "POST", "url": "/posts", "content": b"{", "headers": {**auth, **json_type}},
        {"method": "POST", "url": "/posts", "content": b"", "headers": {**auth, **json_type}},
        post_as("text/plain"),
        post_as("application/json; charset=utf-8"),
        post_as("application/vnd.api+json"),
        {"method": "POST", "url": "/posts", "content": a_post_bytes},
        {"method": "POST", "url": "/posts", "content": b"[" * 5000, "headers": json_type},
        transfer("0.01"),
        transfer("0.01", **{"Idempotency-Key": "{key}"}),
        transfer("0.01", **{"Idempotency-Key": " "}),
        transfer("0.001"),
        transfer("-1"),
        transfer("1e3"),
        transfer(0.01),
        transfer("999999"),
        {
            "method": "PATCH",
            "url": f"/posts/{post['id']}",
            "json": {"title": "new"},
            "headers": {**auth, "If-Match": '"999"'},
        },
        {
            "method": "PATCH",
            "url": f"/posts/{post['id']}",
            "json": {"title": "new"},
            "headers": {**auth, "If-Match": '"1", "2"'},
        },
        {"method": "PATCH", "url": "/posts/abc", "json": {"title": "new"}, "headers": auth},
        {"method": "DELETE", "url": "/posts/999999", "headers": auth},
        {"method": "DELETE", "url": f"/posts/{post['id']}"},
        {"method": "POST", "url": "/users", "json": {"username": "x"}},
        {"method": "POST", "url": "/users", "json": {**author, "password": "password123"}},
        {"method": "GET", "url": "/nowhere"},
        {"method": "PUT", "url": f"/posts/{post['id']}"},
        {"method": "GET", "url": "/users/"},
        {"method": "POST", "url": "/auth/token", "data": {"username": "x", "password": "y"}},
        {"method": "POST", "url": "/auth/refresh"},
        {"method": "GET", "url": "/users/count"},
        {"method": "GET", "url": "/docs"},
        {"method": "GET", "url": "/openapi.json"},
    ]
    planned_app = create_app(state=state)
    fastapi_app = create_app(state=state)
    plan_requests(fastapi_app, False)
    async with client_of(planned_app) as planned, client_of(fastapi_app) as fastapi:
        for case in cases:
            by_plan = await planned.request(**fresh(case))
            by_fastapi = await fastapi.request(**fresh(case))
            assert _comparable(by_plan) == _comparable(by_fastapi), case
            assert by_plan.status_code < 500, case

"""Every route but the admin's bulk operations takes the data path: no ORM session, no ORM
object. One request per route of the contract (the OpenAPI document's routes), each answering
as usual, while every use of the ORM is recorded and charged to the request it happened in: a
session made by the app's factories (`db.session`, `db.write_session`), any ORM session's
transaction, any ORM object built or loaded. `PATCH /users/bulk`, which is meant to use a
session, shows that the recording sees one. On SQLite, PostgreSQL and MariaDB (`state`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import event
from sqlalchemy.orm import Session

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.models import Base
from tests.fixtures.app import Api, client_of

BULK = "/users/bulk"
Route = tuple[str, str]  # method, path template


def contract(app: FastAPI) -> set[Route]:
    """The routes of the OpenAPI document: what API.md describes."""
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
    }


def route_of(app: FastAPI, method: str, path: str) -> Route:
    """The template of the first route that takes this request, as the router picks it."""
    for route in app.routes:
        if (
            isinstance(route, APIRoute)
            and method in (route.methods or ())
            and route.path_regex.match(path) is not None
        ):
            return method, route.path
    raise AssertionError(f"no route takes {method} {path}")


class OrmUse:
    """What used the ORM during the current request (`now`), and per route template."""

    def __init__(self) -> None:
        self.now: list[str] = []
        self.by_route: dict[Route, list[str]] = {}

    def noting(self, what: str) -> Callable[..., None]:
        def note(*_args: Any, **_kwargs: Any) -> None:
            self.now.append(what)

        return note


@pytest.fixture
def orm_use(state: AppState, monkeypatch: pytest.MonkeyPatch) -> Iterator[OrmUse]:
    """Record every ORM session and object while the test runs (listeners removed after)."""
    use = OrmUse()
    for name in ("session", "write_session"):
        factory = getattr(state.db, name)
        note = use.noting(f"db.{name}()")

        def made(*args: Any, _factory: Any = factory, _note: Any = note, **kwargs: Any) -> Any:
            _note()
            return _factory(*args, **kwargs)

        monkeypatch.setattr(state.db, name, made)
    listeners: list[tuple[Any, str, Callable[..., None], dict[str, bool]]] = [
        (Session, "after_transaction_create", use.noting("an ORM session's transaction"), {}),
        (Base, "init", use.noting("an ORM object built"), {"propagate": True}),
        (Base, "load", use.noting("an ORM object loaded"), {"propagate": True}),
    ]
    for target, name, fn, options in listeners:
        event.listen(target, name, fn, **options)
    try:
        yield use
    finally:
        for target, name, fn, _options in listeners:
            event.remove(target, name, fn)


@pytest.fixture
async def watched(state: AppState, orm_use: OrmUse) -> AsyncIterator[tuple[Api, FastAPI]]:
    """The app on the test's connection, each request's ORM use charged to its route."""
    app = create_app(state=state)

    async def starts(_request: httpx.Request) -> None:
        orm_use.now = []

    async def ends(response: httpx.Response) -> None:
        request = response.request
        key = route_of(app, request.method, request.url.path)
        orm_use.by_route.setdefault(key, []).extend(orm_use.now)

    async with client_of(app, event_hooks={"request": [starts], "response": [ends]}) as client:
        yield Api(client, state), app


async def test_every_route_but_the_bulk_ones_uses_no_orm_session_or_object(
    watched: tuple[Api, FastAPI], orm_use: OrmUse
) -> None:
    """One request per route of the contract, each with its usual answer, and no ORM use
    charged to any of them; the bulk route's ORM session is seen (the recording works)."""
    api, app = watched
    c = api.client
    alice, alice_auth = await api.user()  # POST /users, POST /auth/token
    bob, _ = await api.user()
    carol, carol_auth = await api.user()
    _, admin = await api.admin()  # its UPDATE runs outside any request

    def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
        assert response.status_code == status, (response.request.url, response.text)
        return response

    ok(await c.get("/users/me", headers=alice_auth))
    ok(await c.get("/users", headers=admin))
    ok(await c.get("/users/count"))
    ok(await c.get(f"/users/{alice['id']}", headers=alice_auth))
    ok(await c.patch(f"/users/{alice['id']}", json={"username": "alice2"}, headers=alice_auth))
    post = ok(await c.post("/posts", json={"title": "t", "content": "c"}, headers=alice_auth), 201)
    post_path = f"/posts/{post.json()['id']}"
    ok(await c.get("/posts"))
    ok(await c.get(post_path))
    ok(await c.patch(post_path, json={"title": "t2"}, headers=alice_auth))
    ok(await c.delete(post_path, headers=alice_auth), 204)
    await api.deposit(admin, alice["id"], "10.00")  # POST /admin/users/{user_id}/deposit
    transfer = {"to_user_id": bob["id"], "amount": "1.00"}
    ok(await c.post("/transfers", json=transfer, headers=alice_auth), 201)
    ok(await c.get("/transfers", headers=alice_auth))
    tokens = ok(
        await c.post("/auth/token", data={"username": carol["username"], "password": "password123"})
    ).json()
    renewed = ok(await c.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}))
    ended = {"refresh_token": renewed.json()["refresh_token"]}
    ok(await c.post("/auth/logout", json=ended, headers=carol_auth), 204)
    ok(await c.get("/healthz"))
    ok(await c.get("/readyz"))
    ok(await c.delete(f"/users/{carol['id']}", headers=carol_auth), 204)
    bulk = {"ids": [bob["id"]], "values": {"is_active": False}}
    ok(await c.patch(BULK, json=bulk, headers=admin))

    expected = {route for route in contract(app) if route[1] != BULK}
    assert set(orm_use.by_route) - {("PATCH", BULK)} == expected, "a route was not called"
    used = {route: uses for route, uses in orm_use.by_route.items() if route[1] != BULK}
    assert {route: uses for route, uses in used.items() if uses} == {}
    assert "db.write_session()" in orm_use.by_route[("PATCH", BULK)]

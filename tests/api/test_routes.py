"""The app's route list, as built by `create_app` (no database: the lifespan is not run): the hot
operations matched first, no nested router, and every dependency a coroutine FastAPI awaits on
the event loop (a plain `def` one runs in a worker thread, a thread hop per request)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Mount, Route

from asyncblog.api.app import HOT_FIRST, create_app
from tests.fixtures.databases import settings_for


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"))


def operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of each route in matching order; HEAD left out (Starlette adds it to GET)."""
    return [
        (method, route.path)
        for route in app.router.routes
        if isinstance(route, Route)
        for method in sorted((route.methods or set()) - {"HEAD"})
    ]


def nested(route: BaseRoute) -> bool:
    """A router inside the route list (what `include_router` adds: FastAPI's `_IncludedRouter`,
    or a `Mount` of a router), as opposed to one operation or the docs' static files."""
    if isinstance(route, Route):
        return False
    if isinstance(route, Mount):
        return bool(getattr(route.app, "routes", None))
    return True


def test_routes_are_matched_hottest_first_without_nesting(app: FastAPI) -> None:
    """Starlette tries routes in list order: no route is a nested router (matched twice per
    request), the first ones are `HOT_FIRST` in its order, and the literal `/users/count`,
    `/users/me` and `/users/bulk` (PATCH, DELETE) still come before `/users/{user_id}`, which
    would take them."""
    assert [route for route in app.router.routes if nested(route)] == []
    found = operations(app)
    assert found[: len(HOT_FIRST)] == list(HOT_FIRST)
    # A literal path before the parameter that would take it (`me` is no user id: a 422).
    before = [("GET", "/users/count"), ("GET", "/users/me")]
    before += [(method, "/users/bulk") for method in ("PATCH", "DELETE")]
    for method, path in before:
        assert found.index((method, path)) < found.index((method, "/users/{user_id}")), path
    # Every operation of the routers is in the list, once (nothing lost by not including them).
    assert len(found) == len(set(found))
    assert {("POST", "/auth/token"), ("GET", "/readyz"), ("POST", "/users/bulk")} <= set(found)


def dependencies(dependant: Dependant) -> Iterator[Dependant]:
    """Every dependency under `dependant`, through any depth."""
    for sub in dependant.dependencies:
        yield sub
        yield from dependencies(sub)


def awaited(call: object) -> bool:
    """An `async def` (or async generator) function, or an instance whose `__call__` is one:
    what FastAPI awaits instead of sending to its thread pool. A class is not (FastAPI builds
    its instance in a thread)."""
    if inspect.isclass(call):
        return False
    for function in (call, getattr(call, "__call__", None)):  # noqa: B004
        if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
            return True
    return False


def test_every_dependency_is_async(app: FastAPI) -> None:
    """Every dependency of every API route, at any depth, is awaited on the event loop."""
    routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
    assert len(routes) >= len(HOT_FIRST)
    calls = {
        f"{sorted(route.methods or ())} {route.path}: {dep.name} = {dep.call!r}": awaited(dep.call)
        for route in routes
        for dep in dependencies(route.dependant)
    }
    assert calls, "no dependencies found: the walk is broken"
    assert {what for what, ok in calls.items() if not ok} == set()

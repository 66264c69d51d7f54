"""`app.dependency_overrides` for the routes that `app.add_routes` puts in the app's own list.

A route resolves overrides through the provider its router was created with; a router made at
import time has none, and `include_router` would nest it (measured: 30-40 us more per request,
matched twice). So every router is created with `OVERRIDES`, which answers with the overrides of
the app serving the current request (taken from the ASGI scope where FastAPI's handler runs,
`api.routing`): FastAPI's documented `app.dependency_overrides` works for every route, in tests
and anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

current_app: ContextVar[Any] = ContextVar("asyncblog_current_app", default=None)


class _CurrentAppOverrides:
    @property
    def dependency_overrides(self) -> dict[Callable[..., Any], Callable[..., Any]]:
        app = current_app.get()
        overrides: dict[Callable[..., Any], Callable[..., Any]] = (
            getattr(app, "dependency_overrides", None) or {}
        )
        return overrides


OVERRIDES = _CurrentAppOverrides()

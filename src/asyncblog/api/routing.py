"""The routers of the service, made one way."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from asyncblog.api.overrides import OVERRIDES
from asyncblog.api.responses import COMMON_RESPONSES


def service_router(**options: Any) -> APIRouter:
    """A router with the common error answers, whose routes `app.dependency_overrides` reaches
    (through `api.overrides`: `app.add_routes` puts them in the app's own list)."""
    return APIRouter(responses=COMMON_RESPONSES, dependency_overrides_provider=OVERRIDES, **options)

"""Rendering views straight to JSON bytes with pydantic (one pass, no intermediate dict)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from fastapi import Response
from pydantic import TypeAdapter

from asyncblog.schemas import Detail, ErrorDetail

T = TypeVar("T")


class View(Generic[T]):
    """A response view: validates ORM objects by attribute and dumps JSON bytes."""

    def __init__(self, type_: type[T] | Any) -> None:
        self.adapter: TypeAdapter[T] = TypeAdapter(type_)

    def render(self, obj: Any, status_code: int = 200) -> Response:
        value = self.adapter.validate_python(obj, from_attributes=True)
        return Response(self.adapter.dump_json(value), status_code, media_type="application/json")


Responses = dict[int | str, dict[str, Any]]

# Answers any route may give, so the OpenAPI description covers them everywhere.
COMMON_RESPONSES: Responses = {
    400: {"model": Detail, "description": "The body could not be parsed"},
    413: {"model": Detail, "description": "The body is larger than MAX_BODY_BYTES"},
    422: {"model": ErrorDetail, "description": "The request is not valid"},
    503: {"model": Detail, "description": "The database is unavailable or too busy; retry"},
}


def errors(*codes: int) -> Responses:
    """OpenAPI `responses` for these error statuses, each a `{"detail": ...}` sentence."""
    return {code: {"model": Detail} for code in codes}

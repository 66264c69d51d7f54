"""The answers routes build: a view with its ETag, and the error answers every route may give,
for the OpenAPI description."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from asyncblog.repositories.views import Versioned
from asyncblog.schemas import Detail, ErrorDetail

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


ETAG_HEADER = {
    "ETag": {"description": 'The row\'s version: `"<version>"`', "schema": {"type": "string"}}
}
PRECONDITION_FAILED: Responses = {
    412: {"model": Detail, "description": "If-Match names a version the row no longer has"}
}


def versioned(view: Versioned, status_code: int = 200) -> Response:
    """A view of one row, with its version as the ETag (`"<version>"`)."""
    return Response(
        view.body,
        status_code,
        headers={"etag": f'"{view.version}"'},
        media_type="application/json",
    )

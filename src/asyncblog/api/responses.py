"""The answers routes build: a view with its ETag, and the error answers every route may give,
for the OpenAPI description."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from asyncblog.schemas import Detail, ErrorDetail, Versioned

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


# Answers that carry a token or a private view: no cache (a browser's, a proxy's) keeps them.
NO_STORE = {"cache-control": "no-store"}


def versioned(view: Versioned, status_code: int = 200, *, private: bool = False) -> Response:
    """A view of one row, with its version as the ETag (`"<version>"`); a private view is
    not to be stored."""
    headers = {"etag": f'"{view.version}"', **(NO_STORE if private else {})}
    return Response(view.body, status_code, headers=headers, media_type="application/json")


def json_bytes(body: bytes, status_code: int = 200, *, private: bool = False) -> Response:
    return Response(
        body, status_code, headers=NO_STORE if private else None, media_type="application/json"
    )

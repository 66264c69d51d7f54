"""The error answers every route may give, for the OpenAPI description."""

from __future__ import annotations

from typing import Any

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

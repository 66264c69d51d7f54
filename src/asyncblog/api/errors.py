"""Exception handlers: domain errors and database failures as clean JSON answers."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from asyncblog.db.errors import DATABASE_ERRORS, translate
from asyncblog.errors import Busy, ServiceError, Unavailable

logger = logging.getLogger("asyncblog.error")


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    cause = exc.__cause__
    if isinstance(exc, Unavailable) and not isinstance(exc, Busy) and cause is not None:
        logger.warning("database unavailable: %s", type(cause).__name__, exc_info=cause)
    headers = dict(exc.headers)
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if exc.status_code == 503:
        headers.setdefault("Retry-After", "1")
    return JSONResponse({"detail": exc.detail, **exc.extra}, exc.status_code, headers=headers)


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database failure that reached the API untranslated (the ORM paths): translated by the
    one boundary (`db.errors.translate`); what it does not know is a bug (500)."""
    error = translate(exc)
    if error is None:
        raise exc
    error.__cause__ = exc
    if error.status_code in (409, 422):
        logger.info("refused by the database: %s", type(error).__name__)
    return await service_error(request, error)


ECHO_DEPTH = 16


def _printable(value: Any, depth: int = 0) -> Any:
    """`value` made printable as strict JSON: strings encodable as UTF-8 (a lone surrogate from
    a JSON escape such as "\\ud800" becomes U+FFFD), non-finite numbers as text, and nesting
    cut at ECHO_DEPTH levels, so that echoing bad input back cannot itself fail; and the value
    of any key naming a password (`password`, `current_password`, ...) hidden."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and Infinity are not JSON
    if isinstance(value, dict | list | tuple) and depth >= ECHO_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {
            _printable(k, depth + 1): "[hidden]" if _secret(k) else _printable(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_printable(v, depth + 1) for v in value]
    return value


def _secret(key: object) -> bool:
    return isinstance(key, str) and "password" in key.lower()


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, except that a password's value is never echoed back."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        if any("password" in str(part) for part in error.get("loc", ())):
            error = {key: value for key, value in error.items() if key not in ("input", "ctx")}
        errors.append(error)
    # cut the echoed input down first: jsonable_encoder recurses as deep as the input goes
    return JSONResponse({"detail": jsonable_encoder(_printable(errors))}, 422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServiceError, service_error)
    for failure in DATABASE_ERRORS:
        app.add_exception_handler(failure, database_error)

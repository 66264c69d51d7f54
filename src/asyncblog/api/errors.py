"""Exception handlers: domain errors and database failures as clean JSON answers."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from asyncblog.db import is_retryable, unavailable_sqlstate
from asyncblog.errors import DB_UNAVAILABLE, ServiceError

logger = logging.getLogger("asyncblog.error")


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = dict(exc.headers)
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if exc.status_code == 503:
        headers.setdefault("Retry-After", "1")
    return JSONResponse({"detail": exc.detail, **exc.extra}, exc.status_code, headers=headers)


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", type(exc).__name__, exc_info=exc)
    return JSONResponse({"detail": DB_UNAVAILABLE}, 503, headers={"Retry-After": "1"})


async def integrity_error(request: Request, exc: Exception) -> JSONResponse:
    logger.info("integrity error: %s", getattr(exc, "orig", exc))
    return JSONResponse({"detail": "Conflict with existing data"}, 409)


async def data_error(request: Request, exc: Exception) -> JSONResponse:
    logger.info("data error: %s", getattr(exc, "orig", exc))
    return JSONResponse({"detail": "A value is out of range for the database"}, 422)


ECHO_DEPTH = 16


def _printable(value: Any, depth: int = 0) -> Any:
    """`value` made printable as strict JSON: strings encodable as UTF-8 (a lone surrogate from
    a JSON escape such as "\\ud800" becomes U+FFFD), non-finite numbers as text, and nesting
    cut at ECHO_DEPTH levels, so that echoing bad input back cannot itself fail; and any
    "password" in it hidden."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and Infinity are not JSON
    if isinstance(value, dict | list | tuple) and depth >= ECHO_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {
            _printable(k, depth + 1): "[hidden]" if k == "password" else _printable(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_printable(v, depth + 1) for v in value]
    return value


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


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    """A driver error no narrower handler took: bad data (SQLSTATE class 22) is the client's
    422; a lost connection or a cancelled statement is a 503; anything else is a bug (500)."""
    assert isinstance(exc, sa_exc.DBAPIError)
    sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
    if sqlstate.startswith("22"):
        return await data_error(request, exc)
    if (
        exc.connection_invalidated
        or exc.statement is None  # failed while connecting
        or unavailable_sqlstate(sqlstate)
    ):
        return await database_unavailable(request, exc)
    if is_retryable(exc):  # a deadlock or serialization failure outside the transfer retries
        return JSONResponse(
            {"detail": "The database was too busy to complete the request; retry"},
            503,
            headers={"Retry-After": "1"},
        )
    raise exc


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(sa_exc.IntegrityError, integrity_error)
    app.add_exception_handler(sa_exc.DataError, data_error)
    app.add_exception_handler(sa_exc.DBAPIError, database_error)
    for unavailable in (
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sa_exc.TimeoutError,  # the pool had no connection within pool_timeout
        OSError,  # the driver could not connect at all (refused, unreachable, timed out)
        TimeoutError,
    ):
        app.add_exception_handler(unavailable, database_unavailable)

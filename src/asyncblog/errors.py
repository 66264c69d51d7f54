"""Domain errors. Services raise these; the API turns each into its HTTP status and message."""

from __future__ import annotations

from typing import Any

DB_UNAVAILABLE = "Database unavailable"


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class BadRequest(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class PreconditionFailed(ServiceError):
    """If-Match named a version the row no longer has: nothing was changed."""

    status_code = 412

    def __init__(self) -> None:
        super().__init__("The resource was changed by someone else; reload it")


class Invalid(ServiceError):
    """A request that validates field by field but not as a whole (a transfer to oneself)."""

    status_code = 422


class TooManyRequests(ServiceError):
    status_code = 429


class Unavailable(ServiceError):
    status_code = 503


class TimedOut(Unavailable):
    """A statement, a lock wait or the network outlasted its timeout (the database cancelled
    the statement, or the client gave up on it)."""


class Busy(Unavailable):
    """A deadlock, a serialization failure or SQLite's "database is locked": the same work may
    succeed if tried again from the start of its transaction."""


class UniqueViolation(Conflict):
    """An INSERT or UPDATE met a unique constraint; `constraint` names it (never the value)."""

    def __init__(self, constraint: str) -> None:
        super().__init__("Conflict with existing data")
        self.constraint = constraint


class OutOfRange(Invalid):
    """A value the database cannot hold (a number out of range, a string too long)."""

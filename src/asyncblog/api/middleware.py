"""Pure-ASGI middleware: request id, security headers, body size limit, access log, and the
last-resort 500. One layer for all of it: every layer costs each request."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson
from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from asyncblog.api.metrics import RequestRecorder
from asyncblog.db import consistency
from asyncblog.log import REQUEST_ID_ATTRIBUTE, request_id
from asyncblog.metrics import NO_ANSWER

access_logger = logging.getLogger("asyncblog.access")
error_logger = logging.getLogger("asyncblog.error")

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
INTERNAL_ERROR = orjson.dumps({"detail": "Internal server error"})
DOCS_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
]
DOCS_PATHS = ("/docs", "/redoc")
# The API answers JSON; the docs pages set their own policy (api.docs).
API_HEADERS = [
    *DOCS_HEADERS,
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]


class RequestContextMiddleware:
    """Gives every request an id (the client's `X-Request-ID` if sane, else a new one), returns
    it in the response with the security headers, logs one line per request, and turns an
    unhandled exception into a JSON 500 that says nothing about the cause (the traceback goes to
    the log)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool = True,
        max_body: int = 1 << 20,
        recorder: RequestRecorder | None = None,
        telemetry: bool = False,
        consistency: bool = False,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.max_body = max_body
        self.recorder = recorder  # the request metrics, when METRICS=true
        self.telemetry = telemetry  # the request's span (FastAPI's) gets the request id
        self.consistency = consistency  # read replicas: read-your-writes (db.consistency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid, declared_length = _inspect_headers(scope)
        rid = rid or _new_request_id()
        token = request_id.set(rid)
        recorder = self.recorder
        timed = recorder is not None or self.access_log
        started = time.perf_counter() if timed else 0.0
        if recorder is not None:
            recorder.in_flight += 1
        if self.telemetry:
            trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, rid)
        if self.consistency:
            consistency.required.set(_required_position(scope))
            consistency.written.set(None)
        status = 0
        client_gone = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, client_gone
            if client_gone:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                docs = scope["path"].startswith(DOCS_PATHS)
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", rid.encode()),
                    *(DOCS_HEADERS if docs else API_HEADERS),
                ]
                if self.consistency:
                    position = consistency.written.get()
                    if position is not None:
                        message["headers"].extend(_consistency_headers(position))
            try:
                await send(message)
            except (RuntimeError, OSError) as exc:
                # The client left while its answer was being written (with a pipelined request
                # uvicorn may not have told us yet). Its work is done; there is nobody to tell.
                client_gone = True
                access_logger.info("client went away before the response", extra={"why": str(exc)})

        try:
            if declared_length is not None and declared_length > self.max_body:
                await _too_large(send_with_id)
            elif scope["method"] in BODYLESS:
                await self.app(scope, receive, send_with_id)
            else:
                await self.app(scope, self._limited(receive), send_with_id)
        except Exception:
            error_logger.exception(
                "unhandled error", extra={"method": scope["method"], "path": scope["path"]}
            )
            if status == 0:
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(INTERNAL_ERROR)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": INTERNAL_ERROR})
        finally:
            if recorder is not None:
                recorder.done(scope, status or NO_ANSWER, time.perf_counter() - started)
            if self.access_log:
                access_logger.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status or 500,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
            request_id.reset(token)

    def _limited(self, receive: Receive) -> Receive:
        """`receive` that refuses a body (e.g. a chunked one) growing past the limit: 413."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, TOO_LARGE)
            return message

        return limited


CONSISTENCY_HEADER = b"x-consistent-after"
CONSISTENCY_COOKIE = "asyncblog_lsn"
# long enough for any replica to have caught up; after it the cookie constrains nothing
CONSISTENCY_MAX_AGE = 300


def _required_position(scope: Scope) -> int | None:
    """The WAL position this client last wrote at: the furthest of its X-Consistent-After header
    and the cookies the service set (a jar may hold more than one)."""
    found: list[int | None] = []
    for name, value in scope["headers"]:
        if name == CONSISTENCY_HEADER:
            found.append(consistency.parse(value.decode("latin-1")))
        elif name == b"cookie":
            for pair in value.decode("latin-1").split(";"):
                key, _, text = pair.strip().partition("=")
                if key == CONSISTENCY_COOKIE:
                    found.append(consistency.parse(text))
    positions = [p for p in found if p is not None]
    return max(positions) if positions else None


def _consistency_headers(position: int) -> list[tuple[bytes, bytes]]:
    text = consistency.render(position).encode()
    cookie = (
        f"{CONSISTENCY_COOKIE}={text.decode()}; Path=/; Max-Age={CONSISTENCY_MAX_AGE}; "
        "HttpOnly; SameSite=Lax"
    )
    return [(CONSISTENCY_HEADER, text), (b"set-cookie", cookie.encode())]


BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
TOO_LARGE = "Request body too large"


async def _too_large(send: Send) -> None:
    body = orjson.dumps({"detail": TOO_LARGE})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _new_request_id() -> str:
    """96 random bits in hex. An id to correlate log lines needs no secrecy, and `os.urandom`
    releases the GIL for its system call: on SQLite, where aiosqlite's threads wait for the GIL,
    taking it back cost about 13 us per request (cProfile, `GET /posts/{id}` in process).
    `random` is reseeded in every worker process (after a fork too)."""
    return f"{random.getrandbits(96):024x}"


def _inspect_headers(scope: Scope) -> tuple[str | None, int | None]:
    """The client's request id (if sane) and the declared body length (if any)."""
    rid = length = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            rid = text if _CLIENT_ID.match(text) else None
        elif name == b"content-length":
            length = int(value) if value.isdigit() else None
    return rid, length


RAISED = "asyncblog.raised"


class ExceptionHandlers:
    """The app's exception handlers, applied as Starlette's `ExceptionMiddleware` applies them.

    That middleware makes a `Request` and two closures for every request; this layer lets a
    request through with one closure (to know whether its answer has started), and hands only
    one that raised to an `ExceptionMiddleware`, which answers it with the handler for its
    exception (or raises it on). Measured on `GET /posts/{id}` in process (callgrind): 16
    thousand instructions per request for Starlette's layer, 6 for this one."""

    def __init__(
        self, app: ASGIApp, handlers: Mapping[Any, ExceptionHandler], debug: bool = False
    ) -> None:
        self.app = app
        self._answer = ExceptionMiddleware(_raise_again, handlers=handlers, debug=debug)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sender)
        except Exception as exc:
            if started:
                raise
            scope[RAISED] = exc
            await self._answer(scope, receive, send)


async def _raise_again(scope: Scope, receive: Receive, send: Send) -> None:
    raise scope.pop(RAISED)

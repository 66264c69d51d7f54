"""Pure-ASGI middleware: request id, access log, and the last-resort 500."""

from __future__ import annotations

import logging
import re
import time
import uuid

import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asyncblog.log import request_id

access_logger = logging.getLogger("asyncblog.access")
error_logger = logging.getLogger("asyncblog.error")

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
INTERNAL_ERROR = orjson.dumps({"detail": "Internal server error"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
]
# The API answers JSON; /docs is the one HTML page and loads its assets from a CDN.
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


class RequestContextMiddleware:
    """Gives every request an id (the client's `X-Request-ID` if sane, else a new one), returns
    it in the response with the security headers, logs one line per request, and turns an
    unhandled exception into a JSON 500 that says nothing about the cause (the traceback goes to
    the log)."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope) or uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.append("X-Request-ID", rid)
                raw = headers.raw
                raw.extend(SECURITY_HEADERS)
                if not scope["path"].startswith(("/docs", "/redoc")):
                    raw.append(API_CSP)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
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


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_ID.match(text) else None
    return None

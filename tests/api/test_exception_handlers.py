"""`api.middleware.ExceptionHandlers`: the app's exception handlers, as Starlette applies them,
for a request that raised; every other request goes through untouched."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from asyncblog.api.middleware import ExceptionHandlers


class Handled(Exception):
    pass


async def handled(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "handled", "path": request.url.path}, status_code=418)


def layer(app: Any) -> ExceptionHandlers:
    return ExceptionHandlers(app, handlers={Handled: handled})


async def call(app: Any, scope_type: str = "http") -> tuple[list[Message], Scope]:
    scope: Scope = {"type": scope_type, "method": "GET", "path": "/p", "headers": []}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent, scope


async def answers(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def raises(scope: Scope, receive: Receive, send: Send) -> None:
    raise Handled


async def raises_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise Handled


async def raises_unknown(scope: Scope, receive: Receive, send: Send) -> None:
    raise LookupError("no handler")


async def test_a_request_that_does_not_raise_goes_through_untouched() -> None:
    sent, scope = await call(layer(answers))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"ok"
    assert "starlette.exception_handlers" not in scope


async def test_an_exception_is_answered_by_its_handler() -> None:
    sent, scope = await call(layer(raises))
    assert sent[0]["status"] == 418
    assert sent[1]["body"] == b'{"detail":"handled","path":"/p"}'
    assert set(scope) == {"type", "method", "path", "headers", "starlette.exception_handlers"}


async def test_an_exception_after_the_answer_started_is_raised_on() -> None:
    """Its handler would start a second answer: the exception goes on, as with Starlette."""
    with pytest.raises(Handled):
        await call(layer(raises_after_start))


async def test_an_exception_without_a_handler_is_raised_on() -> None:
    with pytest.raises(LookupError):
        await call(layer(raises_unknown))


async def test_what_is_not_http_goes_through() -> None:
    with pytest.raises(Handled):
        await call(layer(raises), scope_type="lifespan")

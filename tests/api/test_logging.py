"""The log lines the app writes while it serves a request: each carries the request's id (the
`X-Request-ID` of its response), and an unexpected error's line carries its traceback.

The id is not an attribute of the log record: the formatters read it from the request's context
(`asyncblog.log.request_id`) when they format the line, so the lines are checked as the app's
`JSONFormatter` writes them, formatted as they are emitted (caplog's handler does so), in the
request's context.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.log import JSONFormatter
from tests.fixtures.app import client_of
from tests.fixtures.cluster import free_port
from tests.fixtures.databases import Backend, settings_for
from tests.fixtures.servers import in_process_app

CLIENT_ID = "log-me-1"
# the HTTP client's own lines (httpx logs each request it made, after the app answered)
CLIENT_LOGGERS = ("httpx", "httpcore")


def app_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[logging.LogRecord, dict[str, Any]]]:
    """The app's log lines since the last `caplog.clear()`, each with its record."""
    lines = caplog.text.splitlines()
    assert len(lines) == len(caplog.records), lines  # one JSON line per record
    return [
        (record, json.loads(line))
        for record, line in zip(caplog.records, lines, strict=True)
        if not record.name.startswith(CLIENT_LOGGERS)
    ]


@pytest.fixture
def json_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog at INFO, its lines formatted by the app's JSON formatter."""
    caplog.set_level(logging.INFO)
    caplog.handler.setFormatter(JSONFormatter())
    return caplog


@pytest.fixture(params=[True, False], ids=["access-log", "no-access-log"])
async def failing_client(
    state: AppState, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[httpx.AsyncClient, bool]]:
    """The app, with the access log on (a line per request) or off, and a route that fails;
    and whether the access log is on."""
    settings = state.settings.model_copy(update={"access_log": request.param})
    logged = AppState.build(settings, state.db)
    app: FastAPI = create_app(state=logged)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    async with client_of(app) as client:
        yield client, request.param


@pytest.mark.parametrize("sent", [CLIENT_ID, None], ids=["client-id", "own-id"])
async def test_a_500_logs_its_traceback_with_the_request_id(
    failing_client: tuple[httpx.AsyncClient, bool],
    json_lines: pytest.LogCaptureFixture,
    sent: str | None,
) -> None:
    """The unhandled error's line is an ERROR of `asyncblog.error` with the traceback, with the
    access log off too; it and the access line carry the response's X-Request-ID (the
    client's, or one made up)."""
    client, access_log = failing_client
    json_lines.clear()
    headers = {"X-Request-ID": sent} if sent else {}
    response = await client.get("/boom", headers=headers)
    assert response.status_code == 500
    rid = response.headers["x-request-id"]
    assert rid == (sent or rid)
    lines = app_lines(json_lines)
    expected = [("asyncblog.error", "ERROR"), *([("asyncblog.access", "INFO")] * access_log)]
    assert [(record.name, line["level"]) for record, line in lines] == expected
    assert [line.get("request_id") for _, line in lines] == [rid] * len(expected)
    record, line = lines[0]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert line["exc"].startswith("Traceback (most recent call last)")
    assert "in boom" in line["exc"]
    assert line["exc"].rstrip().endswith("RuntimeError: secret detail")


def unreachable_url(backend: Backend, tmp_path: Path) -> str:
    """A database of this kind that cannot be reached: nothing listens on the port; for SQLite
    a file in a directory that does not exist."""
    if backend.name == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'nowhere.db'}"
    scheme = {"postgresql": "postgresql+asyncpg", "mariadb": "mysql+aiomysql"}[backend.name]
    user = {"postgresql": "postgres", "mariadb": "root"}[backend.name]
    return f"{scheme}://{user}@127.0.0.1:{free_port()}/nowhere"


async def test_a_503_logs_its_warning_with_the_request_id(
    backend: Backend, tmp_path: Path, json_lines: pytest.LogCaptureFixture
) -> None:
    """With the database unreachable, a request's 503 writes a WARNING 'database unavailable'
    (with the driver's error) and the access line, both with the client's request id."""
    settings = settings_for(
        unreachable_url(backend, tmp_path), db_connect_timeout=1, access_log=True
    )
    async with in_process_app(settings) as api:
        json_lines.clear()
        response = await api.client.get("/users/1", headers={"X-Request-ID": CLIENT_ID})
        lines = app_lines(json_lines)
    assert response.status_code == 503, response.text
    assert response.headers["x-request-id"] == CLIENT_ID
    assert [(record.name, line["level"]) for record, line in lines] == [
        ("asyncblog.error", "WARNING"),
        ("asyncblog.access", "INFO"),
    ]
    assert [line.get("request_id") for _, line in lines] == [CLIENT_ID, CLIENT_ID]
    (record, line), _access = lines
    assert line["msg"].startswith("database unavailable")
    assert record.exc_info is not None and "exc" in line

"""The JSON log lines, and the access log (off by default, on with ACCESS_LOG=true)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator

import httpx
import orjson
import pytest

from asyncblog.api.middleware import RequestContextMiddleware
from asyncblog.config import Settings
from asyncblog.log import (
    ConsoleFormatter,
    JSONFormatter,
    configure_logging,
    console_wanted,
    request_id,
)


def _record(msg: str = "hello", **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "asyncblog.test", "levelname": "INFO", "msg": msg})
    record.__dict__.update(extra)
    return record


def test_a_line_is_one_json_object_with_the_fields_in_order() -> None:
    line = JSONFormatter().format(_record("a %s", method="GET", status=200))
    entry = orjson.loads(line)
    assert list(entry)[:4] == ["ts", "level", "logger", "msg"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert entry["level"] == "INFO" and entry["logger"] == "asyncblog.test"
    assert entry["method"] == "GET" and entry["status"] == 200
    assert "\n" not in line


def test_the_timestamp_is_utc_and_follows_the_clock() -> None:
    formatter = JSONFormatter()
    first = _record()
    first.created, first.msecs = 0.25, 250
    later = _record()
    later.created, later.msecs = 86_400 + 61.5, 500
    assert orjson.loads(formatter.format(first))["ts"] == "1970-01-01T00:00:00.250Z"
    assert orjson.loads(formatter.format(later))["ts"] == "1970-01-02T00:01:01.500Z"


def test_the_request_id_and_the_traceback_are_included() -> None:
    token = request_id.set("req-1")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            record = _record()
            record.exc_info = sys.exc_info()
        entry = orjson.loads(JSONFormatter().format(record))
    finally:
        request_id.reset(token)
    assert entry["request_id"] == "req-1"
    assert "ValueError: boom" in entry["exc"]


def test_the_access_log_is_off_by_default() -> None:
    assert Settings(database_url="sqlite+aiosqlite:///x.db").access_log is False


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_access_log_writes_one_line_per_request(
    caplog: pytest.LogCaptureFixture, enabled: bool
) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    caplog.set_level(logging.INFO, logger="asyncblog.access")
    wrapped = RequestContextMiddleware(app, access_log=enabled)
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/users/7", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 204
    assert response.headers["x-request-id"] == "abc-123"
    lines = [r for r in caplog.records if r.name == "asyncblog.access"]
    if not enabled:
        assert lines == []
        return
    (line,) = lines
    assert (line.method, line.path, line.status) == ("GET", "/users/7", 204)  # type: ignore[attr-defined]
    assert line.duration_ms >= 0  # type: ignore[attr-defined]


def test_a_console_line_reads_as_time_level_message_fields_and_request_id() -> None:
    token = request_id.set("req-7")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            record = _record("user ann logged in")
            record.exc_info = sys.exc_info()
        record.__dict__["status"] = 200
        line = ConsoleFormatter().format(record)
    finally:
        request_id.reset(token)
    first, *trace = line.splitlines()
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3}  INFO      user ann logged in  status=200  \[req-7\]", first
    )
    assert trace[0].startswith("Traceback") and trace[-1] == "ValueError: boom"


def test_the_format_follows_the_setting_and_auto_asks_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert console_wanted("console") and not console_wanted("json")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert console_wanted("auto")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not console_wanted("auto")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """What `configure_logging` changes in the process's logging, put back afterwards (pytest's
    own handlers on the root logger among it)."""
    root = logging.getLogger()
    named = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error")]
    access = logging.getLogger("uvicorn.access")
    plugins = logging.getLogger("alembic.runtime.plugins")
    flags = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    saved_flags = {flag: getattr(logging, flag) for flag in flags}
    saved_root = (root.handlers[:], root.level)
    saved_named = [(logger.handlers[:], logger.propagate) for logger in named]
    saved_access, saved_plugins = access.disabled, plugins.level
    try:
        yield
    finally:
        root.handlers[:], level = saved_root
        root.setLevel(level)
        for logger, (handlers, propagate) in zip(named, saved_named, strict=True):
            logger.handlers[:] = handlers
            logger.propagate = propagate
        access.disabled = saved_access
        plugins.setLevel(saved_plugins)
        for flag, value in saved_flags.items():
            setattr(logging, flag, value)


@pytest.mark.usefixtures("restored_logging")
def test_log_level_writes_lines_from_that_level_up_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """LOG_LEVEL=WARNING: an INFO line of the service is not written, a WARNING and an ERROR
    are, on stderr (nothing on stdout), each with the request id of the request being served."""
    configure_logging("WARNING", "json")
    log = logging.getLogger("asyncblog")
    token = request_id.set("req-level")
    try:
        log.info("below the level")
        log.warning("at the level")
        log.error("above the level")
    finally:
        request_id.reset(token)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [orjson.loads(line) for line in captured.err.splitlines()]
    assert [(line["level"], line["msg"], line["request_id"]) for line in lines] == [
        ("WARNING", "at the level", "req-level"),
        ("ERROR", "above the level", "req-level"),
    ]

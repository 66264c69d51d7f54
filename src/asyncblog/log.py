"""Logging with the request id of the request being served: JSON lines (for log shippers, the
default), or readable lines when a person watches a terminal (`LOG_FORMAT=console`, or `auto`
with stderr a terminal)."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# The request id on the request's trace spans (TELEMETRY=true), as it is in the log lines.
REQUEST_ID_ATTRIBUTE = "asyncblog.request_id"

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, msg, the request id if any, the
    record's `extra` fields, and the traceback if any. Cheap: it runs once per request."""

    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            # uvicorn logs its life cycle as "uvicorn.error"; it is not an error
            "logger": "uvicorn" if record.name == "uvicorn.error" else record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """`12:04:05.123 INFO     message  key=value ... [request id]`, the traceback below."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{clock}.{int(record.msecs):03d}", f"{record.levelname:<8}", record.getMessage()]
        extra = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _RESERVED and not key.startswith("_")
        ]
        if extra:
            parts.append(" ".join(extra))
        rid = request_id.get()
        if rid is not None:
            parts.append(f"[{rid}]")
        line = "  ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def console_wanted(log_format: str) -> bool:
    """Readable lines: asked for, or `auto` with a person at the terminal."""
    if log_format == "auto":
        return sys.stderr.isatty()
    return log_format == "console"


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    # What LogRecord would otherwise gather for every line, and no formatter here prints: the
    # caller's file and line (a stack walk), thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter() if console_wanted(log_format) else JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs requests
    # alembic announces each of its plugins at INFO on every migration: noise, not news
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

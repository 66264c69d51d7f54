"""Traces of the database work (TELEMETRY=true): a span per statement, child of the request's.

The data path runs its statements on the driver connection (`db.database`), beneath SQLAlchemy,
so `opentelemetry-instrumentation-sqlalchemy` sees only the ORM's statements (the bulk imports);
it instruments the engine for those. Every statement of the data path, BEGIN and
COMMIT included, gets its span here, by wrapping the driver calls: with telemetry off the wrapper
is not there and costs nothing.

Each span carries the request's id (`asyncblog.request_id`, as in the logs and the X-Request-ID
header) and the statement's parameterised text, never its values.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.trace import Span, SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncblog.log import REQUEST_ID_ATTRIBUTE, request_id

# OpenTelemetry's database conventions name the systems so.
SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite", "mysql": "mariadb"}

tracer = trace.get_tracer("asyncblog.db")


def instrument_engine(engine: AsyncEngine) -> None:
    """Spans for the ORM's statements. The instrumentor is global and instruments once; it also
    wraps `create_async_engine`, so engines made after that are traced too."""
    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # Its declared range stops below SQLAlchemy 2.1, which it traces as well (its engine
        # events did not change; tests/db/test_tracing.py checks the spans).
        instrumentor.instrument(engine=engine.sync_engine, skip_dep_check=True)


def statement_span(system: str, sql: str) -> AbstractContextManager[Span]:
    """The span of one statement sent by the data path (`system` as `SYSTEMS` names it)."""
    words = sql.split(None, 1)
    operation = words[0].upper() if words else "SQL"
    attributes = {
        "db.system.name": system,
        "db.operation.name": operation,
        "db.query.text": sql,
        REQUEST_ID_ATTRIBUTE: request_id.get() or "",
    }
    return tracer.start_as_current_span(operation, kind=SpanKind.CLIENT, attributes=attributes)

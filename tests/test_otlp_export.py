"""TELEMETRY=true with FASTAPI_OTEL_AUTO_CONFIGURE=true and OTEL_EXPORTER_OTLP_ENDPOINT: the
request's spans are exported over OTLP (http/protobuf) to that endpoint.

The endpoint is a local HTTP listener of the test's own, which keeps what is POSTed to it. The
app runs in a child process, as `serve`'s workers do: the automatic set-up installs the process's
global OpenTelemetry providers, which a test process could not take back (OpenTelemetry allows
one tracer provider per process, and `db/test_tracing.py` sets its in-memory one). The spans are
sent when the app shuts down (its lifespan flushes the exporters), not on a timer.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from sqlalchemy.engine import make_url

from asyncblog.log import REQUEST_ID_ATTRIBUTE
from tests.fixtures.servers import server_env

# The child: the app as `serve` builds it (settings from the environment), its lifespan run by
# Starlette's TestClient, one request, then shutdown.
CHILD = """
from fastapi.testclient import TestClient
from asyncblog.api.app import app_from_env

with TestClient(app_from_env()) as client:
    response = client.get("/healthz", headers={"X-Request-ID": "otlp-request-1"})
    print(response.status_code)
"""


@dataclass
class Received:
    path: str
    content_type: str
    body: bytes


@dataclass
class Collector:
    """A stand-in OTLP/HTTP collector: every POST kept, each answered 200."""

    port: int
    posts: list[Received] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            found.posts.append(Received(self.path, self.headers.get("Content-Type", ""), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def attributes(pairs: list[KeyValue]) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in pairs if kv.value.HasField("string_value")}


def test_the_request_spans_are_exported_over_otlp_http_protobuf(
    collector: Collector, tmp_path: Path
) -> None:
    """A request's span reaches the OTLP endpoint as an http/protobuf POST to /v1/traces: the
    server span of `GET /healthz`, with its route and the request id."""
    env = server_env(
        make_url(f"sqlite+aiosqlite:///{tmp_path / 'otlp.db'}"),
        TELEMETRY="true",
        FASTAPI_OTEL_AUTO_CONFIGURE="true",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_SERVICE_NAME="asyncblog-otlp-test",
        LOG_FORMAT="json",
    )
    ours = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME")
    for name in [n for n in env if n.startswith("OTEL_") and n not in ours]:
        del env[name]  # the machine's own OpenTelemetry settings
    child = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "200", child.stdout + child.stderr

    traces = [p for p in collector.posts if p.path == "/v1/traces"]
    assert traces, f"nothing POSTed to /v1/traces: {[p.path for p in collector.posts]}"
    assert {p.content_type for p in traces} == {"application/x-protobuf"}
    spans = []
    for post in traces:
        request = ExportTraceServiceRequest()
        request.ParseFromString(post.body)
        for resource_spans in request.resource_spans:
            service = attributes(list(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                spans += [(service, attributes(list(s.attributes))) for s in scope_spans.spans]
    served = [(service, found) for service, found in spans if found.get("http.route") == "/healthz"]
    assert len(served) == 1, spans
    service, found = served[0]
    assert service.get("service.name") == "asyncblog-otlp-test"
    assert found.get(REQUEST_ID_ATTRIBUTE) == "otlp-request-1"

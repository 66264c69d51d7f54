"""Prometheus metrics: what the service counts, and the text `/metrics` answers.

The metric objects live here, per process (prometheus-client's registry). Counting is cheap (a
counter is a float under a lock) and always happens; `METRICS=true` only exposes the numbers.
The request metrics are the exception: they cost every request, so the middleware records them
only when metrics are on.

Several worker processes (`asyncblog serve --workers N`) use prometheus-client's multiprocess
mode: `serve` points PROMETHEUS_MULTIPROC_DIR at an empty directory before the workers start
(`cli._metrics_for`),
each worker writes its values to its own files there, and whichever worker answers `/metrics`
sums every worker's files. A worker that died leaves its counters (what it counted happened)
but its live gauges are removed when the next worker starts (`forget_dead_workers`).

Gauges of a moving state (slots of the admission gate in use, requests in flight, pool
connections) are sampled, once a second and before each scrape, instead of written on every
change: a multiprocess write is a lock and a write to a memory-mapped file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import choose_encoder

MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# Seconds; from a hot read (~1 ms) to the pool timeout.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to its answer's last byte, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "http_requests_in_flight",
    "Requests being handled (sampled).",
    multiprocess_mode="livesum",
)
GATE_SLOTS = Gauge(
    "asyncblog_db_gate_slots",
    "Units of work the admission gate lets run at once: the pool's size (SQLite: one more, "
    "the writers' lane) (sampled).",
    multiprocess_mode="livesum",
)
GATE_IN_USE = Gauge(
    "asyncblog_db_gate_slots_in_use",
    "Slots of the admission gate held by a unit of work (sampled).",
    multiprocess_mode="livesum",
)
GATE_WAITING = Gauge(
    "asyncblog_db_gate_waiting",
    "Units of work queued for a slot of the admission gate (sampled).",
    multiprocess_mode="livesum",
)
GATE_TIMEOUTS = Counter(
    "asyncblog_db_gate_timeouts",
    "Waits for a slot that outlasted POOL_TIMEOUT (answered 503).",
)
POOL_CONNECTIONS = Gauge(
    "asyncblog_db_pool_connections",
    "Open database connections, by state: busy (in a unit of work) or idle (sampled).",
    ["state"],
    multiprocess_mode="livesum",
)
DB_ERRORS = Counter(
    "asyncblog_db_errors",
    "Database failures, by kind: unavailable (cannot serve: down, restarting, too many "
    "connections), timed_out (a statement, lock wait or network timeout), busy (a deadlock, "
    "a serialization failure, a locked database: retryable).",
    ["kind"],
)
TRANSFERS = Counter(
    "asyncblog_transfers",
    "Transfers by outcome: created, replayed (an Idempotency-Key seen before), "
    "insufficient_balance, retried (an attempt ran again after a deadlock or serialization "
    "failure), given_up (still contended after every attempt: 503). Other refusals (401, 404, "
    "422) and outages show in http_requests_total.",
    ["outcome"],
)
REPLICA_READS = Counter(
    "asyncblog_replica_reads",
    "Reads by where they went with replicas configured: replica (it had replayed what the "
    "client needed, or nothing was needed), waited (it caught up within REPLICA_WAIT_MS), "
    "primary (the request wrote, no replica caught up in time, or none was up).",
    ["outcome"],
)
# Finer around REPLICA_WAIT_MS's default (100 ms), where the waits that give up end.
WAIT_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
REPLICA_WAIT = Histogram(
    "asyncblog_replica_wait_seconds",
    "How long a read waited for a replica to replay the client's last write, by how the wait "
    "ended: waited (the replica caught up: the read went there), primary (REPLICA_WAIT_MS "
    "passed, or the replica failed: the read went to the primary).",
    ["outcome"],
    buckets=WAIT_BUCKETS,
)
LOGINS = Counter(
    "asyncblog_logins",
    "Password logins by outcome: ok, failed (wrong credentials), throttled (429).",
    ["outcome"],
)

# The known methods; anything else a client sends is counted as "other" (labels stay bounded).
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED: Final = "unmatched"  # a path no route took (404)
# The status of a request that ended without an answer (its client left, it was cancelled):
# nginx's "client closed request", not a 5xx the service answered.
NO_ANSWER: Final = 499


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_DIR_ENV)
    return Path(value) if value else None


def registry() -> CollectorRegistry:
    """This process's registry, or, with several workers, one that sums every worker's files."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    summed = CollectorRegistry()
    _multiprocess.MultiProcessCollector(summed, path=str(directory))  # type: ignore[no-untyped-call]
    return summed


def render(accept: str | None = None) -> tuple[bytes, str]:
    """The exposition text, in the format the scraper accepts (Prometheus' text format, or
    OpenMetrics), and its content type."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry()), content_type


def serve_on_port(port: int, host: str) -> None:
    """Answer scrapes on `port` from a thread of this process (`METRICS_PORT`): with several
    workers, this is `serve`'s supervising process, which sums the workers' files."""
    start_http_server(port, addr=host, registry=registry())


def forget_dead_workers() -> None:
    """Remove the live gauges of worker processes that are gone (killed, crashed, restarted by
    the supervisor), so their last sampled values stop being summed."""
    directory = multiprocess_dir()
    if directory is None:
        return
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            _multiprocess.mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]


def worker_exits() -> None:
    """This worker stops: its live gauges are no longer summed."""
    directory = multiprocess_dir()
    if directory is not None:
        _multiprocess.mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # Linux: a zombie (dead, not yet reaped by the supervisor) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sample_gauges(*, in_flight: int, slots: int, in_use: int, waiting: int) -> None:
    IN_FLIGHT.set(in_flight)
    GATE_SLOTS.set(slots)
    GATE_IN_USE.set(in_use)
    GATE_WAITING.set(waiting)


def sample_pool(*, busy: int, idle: int) -> None:
    POOL_CONNECTIONS.labels(state="busy").set(busy)
    POOL_CONNECTIONS.labels(state="idle").set(idle)


# Every outcome exists from the start, so a rate over it is 0 rather than absent.
for _kind in ("unavailable", "timed_out", "busy"):
    DB_ERRORS.labels(kind=_kind)
for _outcome in ("created", "replayed", "insufficient_balance", "retried", "given_up"):
    TRANSFERS.labels(outcome=_outcome)
for _outcome in ("ok", "failed", "throttled"):
    LOGINS.labels(outcome=_outcome)
for _outcome in ("replica", "waited", "primary"):
    REPLICA_READS.labels(outcome=_outcome)
for _outcome in ("waited", "primary"):
    REPLICA_WAIT.labels(outcome=_outcome)

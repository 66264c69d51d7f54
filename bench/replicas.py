"""`make bench-replicas`: read-your-writes on a real streaming replica, under load.

A throwaway PostgreSQL cluster and a streaming replica of it (`pg_basebackup -R`, the same servers
the tests build: tests/fixtures/postgres.py), one `asyncblog serve` with DATABASE_REPLICA_URLS.
Writers each log in and loop `POST /posts` then `GET /posts/{id}` at once (their cookie carries the
write's WAL position); readers with no position loop `GET /users/{id}`. For each replica delay
(`recovery_min_apply_delay`: 0 is a plain streaming replica; one below REPLICA_WAIT_MS; one above
it) the run reports where the reads went (`asyncblog_replica_reads_total`: replica, waited,
primary), how long the waits were (`asyncblog_replica_wait_seconds`), the read-after-write
latency the client saw, and stale reads (a read after its own write that answered 404: must be 0).
A first run with no replica is the baseline.

    .venv/bin/python bench/replicas.py --duration 10s --delays 0 50 500
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import httpx
from common import BenchError, Pg, Server, fmt, log
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(common.ROOT))
from tests.fixtures.postgres import (
    Cluster,
    Replica,
    ServerFailed,
    ToolingMissing,
    basebackup,
    create_cluster,
)

PASSWORD = "password123"  # `asyncblog seed`'s default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 50, 500], help="ms")
    parser.add_argument("--writers", type=int, default=16, help="write-then-read clients")
    parser.add_argument("--readers", type=int, default=16, help="clients with no position")
    parser.add_argument("--duration", type=common.parse_duration, default="10s", help="per run")
    parser.add_argument("--wait-ms", type=int, default=100, help="REPLICA_WAIT_MS")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


@dataclass
class Load:
    """What the clients saw in one run."""

    writes: list[float] = field(default_factory=list)  # seconds, POST /posts
    own_reads: list[float] = field(default_factory=list)  # seconds, GET /posts/{id} after it
    other_reads: list[float] = field(default_factory=list)  # seconds, GET /users/{id}
    stale: int = 0
    errors: dict[int, int] = field(default_factory=dict)

    def error(self, status: int) -> None:
        self.errors[status] = self.errors.get(status, 0) + 1


async def writer(base: str, n: int, deadline: float, load: Load) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        login = await client.post(
            "/auth/token", data={"username": f"user{n}", "password": PASSWORD}
        )
        if login.status_code != 200:
            raise BenchError(f"user{n} could not log in: {login.status_code} {login.text}")
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        while time.monotonic() < deadline:
            started = time.perf_counter()
            created = await client.post("/posts", json={"title": "t", "content": "c"}, headers=auth)
            wrote = time.perf_counter()
            if created.status_code != 201:
                load.error(created.status_code)
                continue
            shown = await client.get(f"/posts/{created.json()['id']}")  # the cookie travels
            load.writes.append(wrote - started)
            load.own_reads.append(time.perf_counter() - wrote)
            if shown.status_code == 404:
                load.stale += 1
            elif shown.status_code != 200:
                load.error(shown.status_code)


async def reader(base: str, users: int, deadline: float, load: Load) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            shown = await client.get(f"/users/{random.randint(1, users)}")
            load.other_reads.append(time.perf_counter() - started)
            if shown.status_code != 200:
                load.error(shown.status_code)


async def drive(base: str, args: argparse.Namespace) -> tuple[Load, dict[str, float]]:
    """One run of the load; the server's replica counters and wait histogram over it."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        before = await scrape(client)
        load = Load()
        deadline = time.monotonic() + args.duration
        await asyncio.gather(
            *(writer(base, n + 1, deadline, load) for n in range(args.writers)),
            *(reader(base, args.users, deadline, load) for _ in range(args.readers)),
        )
        after = await scrape(client)
    return load, {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """The replica series of /metrics, keyed `name{outcome,le}`."""
    response = await client.get("/metrics")
    response.raise_for_status()
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("asyncblog_replica_"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def wait_quantile(series: dict[str, float], outcome: str, q: float) -> float:
    """A quantile of the waits of one outcome from the histogram's buckets (the bucket's upper
    bound: at most one bucket too high), in ms; NaN when nothing waited."""
    prefix = "asyncblog_replica_wait_seconds_bucket{"
    buckets = sorted(
        (float(key.split("le=")[1].split(",")[0].rstrip("}")), value)
        for key, value in series.items()
        if key.startswith(prefix) and f"outcome={outcome}" in key
    )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return math.nan
    for bound, count in buckets:
        if count >= q * total:
            return bound * 1000
    return math.inf


def ms(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def summarise(name: str, load: Load, series: dict[str, float], duration: int) -> dict[str, Any]:
    reads = {
        outcome: series.get(f"asyncblog_replica_reads_total{{outcome={outcome}}}", 0.0)
        for outcome in ("replica", "waited", "primary")
    }
    return {
        "run": name,
        "writes_per_s": len(load.writes) / duration,
        "other_reads_per_s": len(load.other_reads) / duration,
        "write_p50_ms": ms(load.writes, 0.5),
        "own_read_p50_ms": ms(load.own_reads, 0.5),
        "own_read_p99_ms": ms(load.own_reads, 0.99),
        "other_read_p50_ms": ms(load.other_reads, 0.5),
        "other_read_p99_ms": ms(load.other_reads, 0.99),
        "reads": reads,
        "wait_p50_ms": {o: wait_quantile(series, o, 0.5) for o in ("waited", "primary")},
        "wait_p99_ms": {o: wait_quantile(series, o, 0.99) for o in ("waited", "primary")},
        "stale": load.stale,
        "errors": load.errors,
    }


def report_run(report: common.Report, run: dict[str, Any]) -> None:
    reads = run["reads"]
    total = sum(reads.values())
    share = (
        ", ".join(f"{k} {v:.0f} ({100 * v / total:.1f} %)" for k, v in reads.items())
        if total
        else "no replica"
    )
    report.add(
        f"  {run['run']}: {fmt(run['writes_per_s'])} write-then-read/s + "
        f"{fmt(run['other_reads_per_s'])} other reads/s; read after own write p50 "
        f"{fmt(run['own_read_p50_ms'], 2)} ms, p99 {fmt(run['own_read_p99_ms'], 2)} ms; "
        f"other reads p50 {fmt(run['other_read_p50_ms'], 2)} ms, p99 "
        f"{fmt(run['other_read_p99_ms'], 2)} ms"
    )
    report.add(f"      reads: {share}")
    waits = [
        f"{o}: p50 <= {fmt(run['wait_p50_ms'][o], 1)} ms, p99 <= {fmt(run['wait_p99_ms'][o], 1)} ms"
        for o in ("waited", "primary")
        if not math.isnan(run["wait_p50_ms"][o])
    ]
    report.add(
        f"      waits ({'; '.join(waits) or 'none'}); stale reads {run['stale']}, "
        f"errors {run['errors'] or 0}"
    )


def serve_and_drive(
    env: dict[str, str], out: Path, label: str, args: argparse.Namespace
) -> tuple[Load, dict[str, float]]:
    with Server(env, out / f"{label}.server.log") as server:
        server.wait_ready()
        return asyncio.run(drive(server.url, args))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_signal_handlers()
    report = common.Report()
    results: dict[str, Any] = {"args": vars(args), "runs": []}
    out = common.results_dir("replicas", args.out)
    cluster: Cluster | None = None
    replica: Replica | None = None
    exit_code = 0
    try:
        try:
            cluster = create_cluster("abbench", synchronous_commit=True)
        except ToolingMissing as exc:
            raise BenchError(f"a throwaway cluster is needed: {exc}", 2) from None
        pg = Pg(port=cluster.port)
        info = common.environment(pg)
        results["environment"] = info
        report.add(
            f"asyncblog bench-replicas  {info['date']}  git {info['git_rev']}  cpus "
            f"{info['cpus']}  postgres {info['postgres']}"
        )
        db = "asyncblog_replicas"
        pg.recreate(db)
        env = common.app_env(pg, db, secrets.token_urlsafe(32), METRICS="true")
        common.migrate_and_seed(env, args.users, 1, out / "seed.log")
        replica = basebackup(cluster, db, args.delays[0])
        asyncio.run(replica.start())
        report.add(
            f"{args.writers} writers (POST /posts, then GET /posts/{{id}} with the cookie) + "
            f"{args.readers} readers (GET /users/{{id}}, no position), {args.duration}s per run, "
            f"1 worker, REPLICA_WAIT_MS={args.wait_ms}"
        )
        load, series = serve_and_drive(env, out, "primary_only", args)
        results["runs"].append(summarise("no replica", load, series, args.duration))
        report_run(report, results["runs"][-1])
        replicated = dict(
            env,
            DATABASE_REPLICA_URLS=f"postgresql+asyncpg://postgres@127.0.0.1:{replica.port}/{db}",
            REPLICA_WAIT_MS=str(args.wait_ms),
        )
        for delay in args.delays:
            asyncio.run(replica.set_apply_delay(delay))
            log(f"== replica applying {delay} ms late")
            load, series = serve_and_drive(replicated, out, f"delay_{delay}", args)
            results["runs"].append(
                summarise(f"replica {delay} ms late", load, series, args.duration)
            )
            report_run(report, results["runs"][-1])
        bad = [r for r in results["runs"] if r["stale"] or r["errors"]]
        exit_code = 1 if bad else 0
    except (BenchError, ServerFailed) as exc:
        log(f"bench-replicas: ERROR: {exc}")
        results["error"] = str(exc)
        exit_code = getattr(exc, "exit_code", 1)
    finally:
        common.write_json(out / "results.json", results)
        report.write(out / "summary.txt")
        if replica is not None:
            asyncio.run(replica.stop())
            replica.remove()
        if cluster is not None:
            cluster.drop()
        log(f"== results: {out}/summary.txt")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

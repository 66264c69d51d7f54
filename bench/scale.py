"""`make bench-scale`: `GET /users/{id}` served by 1 and by 2 worker processes, one after the
other (1, 2, 2, 1, ...: a drift of the machine's load hits both alike), each alone on the box.

Reports requests/s, p99 and the servers' CPU time per request, and the arithmetic for a bigger
machine: a worker is one process on one core, so N workers on N free cores serve about
N x 1e6 / (CPU us per request) requests/s, until the database is the limit (pgbench running
the same SQL on this box: `make bench`).

    .venv/bin/python bench/scale.py --rounds 2 --duration 10s
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
from pathlib import Path
from typing import Any

import common
from common import BenchError, Server, fmt, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--conc", type=int, default=64, help="connections")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=common.parse_duration, default="10s", help="per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--posts", type=int, default=3)
    parser.add_argument("--db", default=os.environ.get("BENCH_DB", "asyncblog_scale"))
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def one_run(
    env: dict[str, str], workers: int, args: argparse.Namespace, out: Path, n: int
) -> dict[str, Any]:
    label = f"w{workers}_r{n}"
    wrk_env = {"USERS": str(args.users), "POSTS": str(args.users * args.posts)}
    with Server(env, out / f"{label}.server.log", workers=workers) as server:
        server.wait_ready()
        run = common.measured_run(
            server, "users_id.lua", args.conc, args.warmup, args.duration, out, label, wrk_env
        )
    return {"workers": workers, **run}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_signal_handlers()
    try:
        pg, env_info, out, report = common.start_run("bench-scale", "scale", args.out)
    except BenchError as exc:
        log(f"bench-scale: ERROR: {exc}")
        return exc.exit_code
    env = common.app_env(pg, args.db, secrets.token_urlsafe(32))
    results: dict[str, Any] = {"args": vars(args), "environment": env_info, "runs": []}
    exit_code = 0
    try:
        pg.recreate(args.db)
        common.migrate_and_seed(env, args.users, args.posts, out / "seed.log")
        order = list(args.workers)
        for n in range(args.rounds):
            for workers in order if n % 2 == 0 else list(reversed(order)):
                log(f"== round {n + 1}: {workers} worker(s)")
                results["runs"].append(one_run(env, workers, args, out, n + 1))
        report.add(f"GET /users/{{id}} c={args.conc}, {args.rounds} rounds x {args.duration}s")
        for workers in args.workers:
            runs = [r for r in results["runs"] if r["workers"] == workers]
            rps = statistics.median(r["rps"] for r in runs)
            cpu = statistics.median(r["cpu_us_per_request"] for r in runs)
            report.add(
                f"  {workers} worker(s): rps {', '.join(fmt(r['rps']) for r in runs)} "
                f"(median {fmt(rps)}); p99 ms {', '.join(fmt(r['p99_ms'], 2) for r in runs)}; "
                f"server CPU {fmt(cpu)} us/request; errors {sum(r['errors'] for r in runs)}; "
                f"one worker per free core: about {fmt(workers * 1e6 / cpu)} requests/s"
            )
            exit_code = exit_code or (1 if any(r["errors"] for r in runs) else 0)
    except BenchError as exc:
        log(f"bench-scale: ERROR: {exc}")
        results["error"] = str(exc)
        exit_code = exc.exit_code
    finally:
        common.finish_run("bench-scale", pg, args.db, out, results, report)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

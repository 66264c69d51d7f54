"""`make bench-ab`: what a setting costs, as two servers that differ only in it, side by side.

Throughput on this shared 2-core box moves 10-15 % between runs of the same server, more than
most settings cost, and so does the CPU time per request (another tenant's load shows in it). So
A and B run at the same time, each server loaded by its own wrk with half the connections:
whatever the machine does meanwhile hits both alike, and B's requests against A's are what the
setting costs (1.00: nothing). Each round starts both servers anew; the report gives each
round's ratio and their median, and each server's CPU time per request (from /proc).

    .venv/bin/python bench/ab.py --b METRICS=true                # the cost of the metrics
    .venv/bin/python bench/ab.py --a TELEMETRY=false --b TELEMETRY=true --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
from common import BenchError, Report, Server, fmt, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--a", nargs="*", default=[], help="settings of A, NAME=value")
    parser.add_argument("--b", nargs="*", default=["METRICS=true"], help="settings of B")
    parser.add_argument("--script", default="users_id.lua", help="wrk script in bench/lua")
    parser.add_argument("--conc", type=int, default=64, help="connections, half to each server")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each with new servers")
    parser.add_argument("--duration", type=common.parse_duration, default="10s", help="per run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before each run")
    parser.add_argument("--users", type=int, default=10_000, help="users to seed")
    parser.add_argument("--posts", type=int, default=3, help="posts per user to seed")
    parser.add_argument("--db", default=os.environ.get("BENCH_DB", "asyncblog_ab"))
    parser.add_argument("--out", type=Path, default=None, help="results base directory")
    return parser.parse_args(argv)


def settings(pairs: list[str]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BenchError(f"not NAME=value: {pair!r}", 2)
        parsed[name] = value
    return parsed


def measure(server: Server, args: argparse.Namespace, out: Path, label: str) -> dict[str, Any]:
    """One measured run against `server`, while the other server is measured too."""
    wrk_env = {"USERS": str(args.users), "POSTS": str(args.users * args.posts)}
    conc = max(args.conc // 2, 1)
    return common.measured_run(
        server, args.script, conc, args.warmup, args.duration, out, label, wrk_env
    )


def one_round(
    envs: dict[str, dict[str, str]], args: argparse.Namespace, out: Path, n: int
) -> dict[str, dict[str, Any]]:
    """A and B served at once, each measured by its own wrk at the same time."""
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(Server(env, out / f"{name}{n}.server.log"))
            for name, env in envs.items()
        }
        for server in servers.values():
            server.wait_ready()
        with ThreadPoolExecutor(len(servers)) as pool:
            futures = {
                name: pool.submit(measure, server, args, out, f"{name}{n}")
                for name, server in servers.items()
            }
            return {name: future.result() for name, future in futures.items()}


def summarize(
    report: Report, args: argparse.Namespace, rounds: list[dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    report.add(
        f"{args.script}, A and B at once with c={max(args.conc // 2, 1)} each, "
        f"{len(rounds)} rounds x {args.duration}s"
    )
    for name, given in (("A", args.a), ("B", args.b)):
        runs = [r[name] for r in rounds]
        report.add(
            f"  {name} {' '.join(given) or '(defaults)'}: rps "
            f"{', '.join(fmt(r['rps']) for r in runs)}; p99 ms "
            f"{', '.join(fmt(r['p99_ms'], 2) for r in runs)}; CPU us/request "
            f"{', '.join(fmt(r['cpu_us_per_request']) for r in runs)}; errors "
            f"{sum(r['errors'] for r in runs)}"
        )
    ratios = [r["B"]["rps"] / r["A"]["rps"] for r in rounds]
    cpu = [r["A"]["cpu_us_per_request"] / r["B"]["cpu_us_per_request"] for r in rounds]
    report.add(
        f"  B/A requests/s by round {', '.join(f'{x:.3f}' for x in ratios)}: median "
        f"{statistics.median(ratios):.3f}; A/B CPU per request median {statistics.median(cpu):.3f}"
    )
    return {"rps_b_over_a": ratios, "cpu_a_over_b": cpu}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_signal_handlers()
    try:
        pg, env_info, out, report = common.start_run("bench-ab", "ab", args.out)
        variants = {"A": settings(args.a), "B": settings(args.b)}
    except BenchError as exc:
        log(f"bench-ab: ERROR: {exc}")
        return exc.exit_code
    base = common.app_env(pg, args.db, secrets.token_urlsafe(32))
    results: dict[str, Any] = {"args": vars(args), "environment": env_info, "rounds": []}
    exit_code = 0
    try:
        log(f"== database {args.db}: drop + create, migrate, seed {args.users} x {args.posts}")
        pg.recreate(args.db)
        common.migrate_and_seed(base, args.users, args.posts, out / "seed.log")
        envs = {name: {**base, **values} for name, values in variants.items()}
        for n in range(1, args.rounds + 1):
            log(f"== round {n}: A {variants['A'] or '(defaults)'} beside B {variants['B']}")
            measured = one_round(envs, args, out, n)
            results["rounds"].append(measured)
            log(f"   B/A requests/s {measured['B']['rps'] / measured['A']['rps']:.3f}")
        results["ratios"] = summarize(report, args, results["rounds"])
        if any(r[v]["errors"] for r in results["rounds"] for v in ("A", "B")):
            exit_code = 1
    except BenchError as exc:
        log(f"bench-ab: ERROR: {exc}")
        results["error"] = str(exc)
        exit_code = exc.exit_code
    except KeyboardInterrupt:
        results["error"] = "interrupted"
        exit_code = 130
    finally:
        common.finish_run("bench-ab", pg, args.db, out, results, report)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

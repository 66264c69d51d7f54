"""`make bench-sqlite`: the embedded SQLite default under the same read load, with writers at once.

Seeds a fresh SQLite file (in the results directory) with `asyncblog seed`, starts
`asyncblog serve --workers 1` on it, and for each concurrency drives `GET /users/{id}` with wrk
while a second wrk drives `POST /posts` (writers) at the same time. Prints requests/s, latency,
non-2xx and socket errors of both, and counts "database is locked" in the server log (it must
be 0: writing requests take SQLite's write lock with BEGIN IMMEDIATE and queue on the busy
timeout instead of failing).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
from common import BenchError, Report, Server, fmt, log
from run import login_tokens, smoke_check


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000, help="users to seed")
    parser.add_argument("--posts", type=int, default=3, help="posts per user to seed")
    parser.add_argument("--password", default="password123", help="the seeded users' password")
    parser.add_argument("--duration", default="10s", help="per run")
    parser.add_argument("--concs", type=int, nargs="+", default=[16, 64, 256], help="readers")
    parser.add_argument("--writers", type=int, default=8, help="concurrent POST /posts clients")
    parser.add_argument("--token-users", type=int, default=50, help="users logged in to write")
    parser.add_argument("--out", type=Path, default=None, help="results base dir")
    args = parser.parse_args(argv)
    args.duration_s = common.parse_duration(args.duration)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_signal_handlers()
    try:
        common.require_tools(common.WRK)
    except BenchError as exc:
        log(f"bench-sqlite: ERROR: {exc}")
        return exc.exit_code
    out = common.results_dir("sqlite", args.out)
    log(f"== results dir: {out}")
    report = Report()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite+aiosqlite:///{out / 'bench.db'}",
        SECRET_KEY=secrets.token_urlsafe(32),
        ACCESS_LOG="false",
        ACCESS_TOKEN_EXPIRE_MINUTES="240",
    )
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    exit_code = 0
    try:
        took = common.migrate_and_seed(env, args.users, args.posts, out / "seed.log")
        report.add(
            f"asyncblog on SQLite: {args.users} users x {args.posts} posts seeded in {took:.1f}s"
        )
        with Server(env, out / "server.log") as server:
            server.wait_ready()
            smoke_check(server.url, args.users, args.posts)
            tokens_file = out / "tokens.txt"
            tokens = login_tokens(server.url, args.users, args.token_users, args.password)
            tokens_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
            wrk_env = {"USERS": str(args.users), "TOKENS_FILE": str(tokens_file)}
            rows = []
            for conc in args.concs:
                with ThreadPoolExecutor(2) as pool:
                    reads = pool.submit(
                        common.run_wrk, server.url, "users_id.lua", conc, args.duration_s,
                        out / f"users_id_c{conc}.wrk", wrk_env,
                    )  # fmt: skip
                    writes = pool.submit(
                        common.run_wrk, server.url, "posts_create.lua", args.writers,
                        args.duration_s, out / f"posts_create_c{conc}.wrk", wrk_env,
                    )  # fmt: skip
                    read, write = reads.result(), writes.result()
                for label, c, r in (
                    ("GET /users/{id}", conc, read),
                    ("POST /posts", args.writers, write),
                ):
                    rows.append(
                        (label, c, fmt(r.rps), fmt(r.p("50"), 2), fmt(r.p("99"), 2),
                         r.non2xx, r.socket_errors_total)
                    )  # fmt: skip
                    results["runs"].append(
                        {"label": label, "conc": c, "errors": r.non2xx + r.socket_errors_total,
                         **r.to_json()}
                    )  # fmt: skip
                log(f"   readers c={conc}: {read.rps:.0f} rps; writers: {write.rps:.0f} rps")
        log_text = (out / "server.log").read_text(encoding="utf-8", errors="replace")
        locked = log_text.lower().count("database is locked")
        errors = sum(int(r["errors"]) for r in results["runs"])
        results.update(database_is_locked=locked, errors=errors)
        report.add("")
        report.add(
            common.format_table(
                ("request", "conc", "rps", "p50 ms", "p99 ms", "non2xx", "sock err"), rows
            )
        )
        report.add("")
        report.add(f'"database is locked" in the server log: {locked}; errors in total: {errors}')
        if locked or errors:
            exit_code = 1
    except BenchError as exc:
        log(f"bench-sqlite: ERROR: {exc}")
        results["error"] = str(exc)
        exit_code = exc.exit_code
    finally:
        common.write_json(out / "results.json", results)
        report.write(out / "summary.txt")
    log(f"== results: {out}/results.json, summary.txt")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

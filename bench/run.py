"""`make bench`: throughput and latency of asyncblog's endpoints on PostgreSQL, against pgbench.

Steps: drop+create the database, `asyncblog migrate` + `seed`, start `asyncblog serve --workers 1`
(ACCESS_LOG=false, own process group), then per scenario x concurrency a warm-up and one
`wrk -t1 -cC -dD --latency` run; the server's RSS before and after; then pgbench running the SQL of
GET /users/{id} as the database's own ceiling. Results: bench-results/bench_<timestamp>/.

`--memory-check` instead drives GET /users/{id} for a fixed number of requests and compares the
server's RSS after the first 100k requests with the RSS at the end.

    .venv/bin/python bench/run.py --duration 3s --warmup 1 --concs 16 64 --users 2000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import httpx
from common import BenchError, Pg, Report, Server, fmt, log


@dataclass(frozen=True, slots=True)
class Scenario:
    label: str
    script: str


SCENARIOS: dict[str, Scenario] = {
    "users_id": Scenario("GET /users/{id}", "users_id.lua"),
    "users_list": Scenario("GET /users?limit=100", "users_list.lua"),
    "posts_id": Scenario("GET /posts/{id}", "posts_id.lua"),
    "posts_create": Scenario("POST /posts", "posts_create.lua"),
}

# The SQL that GET /users/{id} runs, for pgbench (-D users=N).
USERS_ID_SQL = """\\set id random(1, :users)
SELECT id, username, email, is_active, created_at, balance, is_admin FROM users WHERE id = :id;
SELECT id, title, content, author_id, created_at, updated_at FROM posts WHERE author_id = :id \
ORDER BY id;
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000, help="users to seed")
    parser.add_argument("--posts", type=int, default=3, help="posts per user to seed")
    parser.add_argument("--password", default="password123", help="the seeded users' password")
    parser.add_argument("--duration", type=common.parse_duration, default="10s", help="per run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run")
    parser.add_argument("--concs", type=int, nargs="+", default=[16, 64, 256], help="wrk -c")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=list(SCENARIOS),
        default=list(SCENARIOS),
        metavar="NAME",
        help=f"any of {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("BENCH_DB", "asyncblog_bench"),
        help="database to drop, create and seed (env BENCH_DB)",
    )
    parser.add_argument(
        "--keep-db", action="store_true", help="do not drop the database at the end"
    )
    parser.add_argument(
        "--token-users", type=int, default=200, help="users logged in for POST /posts"
    )
    parser.add_argument("--pgbench-conc", type=int, default=64, help="pgbench clients")
    parser.add_argument("--out", type=Path, default=None, help="results base dir (bench-results/)")
    memory = parser.add_argument_group("memory check (instead of the scenarios)")
    memory.add_argument("--memory-check", action="store_true", help="run the memory check")
    memory.add_argument("--memory-requests", type=int, default=1_000_000, help="in total")
    memory.add_argument("--memory-first", type=int, default=100_000, help="first RSS checkpoint")
    memory.add_argument("--memory-conc", type=int, default=64, help="wrk -c")
    args = parser.parse_args(argv)
    problem = common.db_name_problem(args.db)
    if problem:
        parser.error(problem)
    if args.users < 1 or args.posts < 0 or min(args.concs) < 1 or args.warmup < 0:
        parser.error("need --users >= 1, --posts >= 0, --concs >= 1, --warmup >= 0")
    if "posts_id" in args.scenarios and args.posts == 0:
        log("== --posts 0: leaving out posts_id")
        args.scenarios.remove("posts_id")
    args.token_users = max(1, min(args.token_users, args.users))
    if not 0 < args.memory_first < args.memory_requests:
        parser.error("need 0 < --memory-first < --memory-requests")
    return args


# ------------------------------------------------------------------------------------ setup


def smoke_check(url: str, users: int, posts: int) -> None:
    """A few requests whose answers we know, so we never measure a broken server."""
    problems = []
    with httpx.Client(base_url=url, timeout=30) as client:
        user = client.get("/users/1")
        if user.status_code != 200 or len(user.json().get("posts", [])) != posts:
            problems.append(f"GET /users/1 -> {user.status_code} {user.text[:200]}")
        missing = client.get(f"/users/{users + 1}")
        if missing.status_code != 404:
            problems.append(f"GET /users/{users + 1} -> {missing.status_code} (expected 404)")
        page = client.get("/users", params={"limit": 100, "after_id": 0})
        if page.status_code != 200 or len(page.json()) != min(100, users):
            problems.append(f"GET /users?limit=100 -> {page.status_code} {page.text[:200]}")
        if posts:
            post = client.get("/posts/1")
            if post.status_code != 200 or post.json().get("id") != 1:
                problems.append(f"GET /posts/1 -> {post.status_code} {post.text[:200]}")
    if problems:
        raise BenchError("smoke check failed, not measuring:\n  " + "\n  ".join(problems))


def login_tokens(url: str, users: int, count: int, password: str) -> list[str]:
    """Access tokens of `count` seeded users spread over 1..users, via POST /auth/token."""
    numbers = sorted({1 + k * users // count for k in range(count)})

    async def go() -> list[str]:
        limit = asyncio.Semaphore(4)  # Argon2 is slow by design; the server hashes 2 at a time
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def login(n: int) -> str:
                async with limit:
                    form = {"username": f"user{n}", "password": password}
                    response = await client.post("/auth/token", data=form)
                if response.status_code != 200:
                    raise BenchError(f"login of user{n}: {response.status_code} {response.text}")
                return str(response.json()["access_token"])

            return list(await asyncio.gather(*(login(n) for n in numbers)))

    return asyncio.run(go())


def seed(pg: Pg, args: argparse.Namespace, env: dict[str, str], out: Path, report: Report) -> None:
    log(f"== database {args.db}: drop + create, migrate, seed {args.users} x {args.posts}")
    pg.recreate(args.db)
    took = common.migrate_and_seed(env, args.users, args.posts, out / "seed.log")
    in_range = pg.fetchval(
        args.db, "SELECT count(*) FROM users WHERE id BETWEEN 1 AND $1", args.users
    )
    posts = pg.fetchval(args.db, "SELECT count(*) FROM posts")
    if in_range != args.users or posts != args.users * args.posts:
        raise BenchError(f"after seeding: {in_range} users with ids 1..{args.users}, {posts} posts")
    report.add(f"seeded {args.users} users, {posts} posts in {took:.1f}s into {args.db}")


# ------------------------------------------------------------------------------------ runs


def run_scenarios(
    server: Server, args: argparse.Namespace, out: Path, tokens_file: Path | None
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    wrk_env = {
        "USERS": str(args.users),
        "POSTS": str(args.users * args.posts),
        "TOKENS_FILE": str(tokens_file or ""),
    }
    for key in args.scenarios:
        scenario = SCENARIOS[key]
        for conc in args.concs:
            if not server.alive():
                raise BenchError(f"the server is gone before {key} c={conc}:\n{server.log_tail()}")
            tag = f"{key}_c{conc}"
            row: dict[str, Any] = {"scenario": key, "label": scenario.label, "conc": conc}
            try:
                if args.warmup:
                    warm = out / f"{tag}.warmup.wrk"
                    common.run_wrk(
                        server.url, scenario.script, conc, args.warmup, warm, wrk_env, False
                    )
                result = common.run_wrk(
                    server.url, scenario.script, conc, args.duration, out / f"{tag}.wrk", wrk_env
                )
            except BenchError as exc:
                log(f"   {scenario.label} c={conc}: FAILED: {exc}")
                runs.append({**row, "status": "failed", "error": str(exc)})
                continue
            runs.append({**row, "status": "ok", **result.to_json()})
            log(
                f"   {scenario.label:<21} c={conc:<4} rps={result.rps:>9.1f} "
                f"p50={fmt(result.p('50'))}ms p99={fmt(result.p('99'))}ms "
                f"non2xx={result.non2xx} sockerr={result.socket_errors_total}"
            )
    return runs


def pgbench_ceiling(pg: Pg, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    script = out / "users_id.pgbench.sql"
    script.write_text(USERS_ID_SQL, encoding="utf-8")
    base = ["-n", "-M", "prepared", "-c", str(args.pgbench_conc), "-j", "2"]
    base += ["-f", str(script), "-D", f"users={args.users}"]
    if args.warmup:
        common.run_pgbench(pg, args.db, [*base, "-T", str(args.warmup)], out / "pgbench.warmup.txt")
    result = common.run_pgbench(pg, args.db, [*base, "-T", str(args.duration)], out / "pgbench.txt")
    return {
        **result.to_json(),
        "max_connections": int(pg.fetchval(args.db, "SHOW max_connections")),
    }


def memory_check(server: Server, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """GET /users/{id} for --memory-requests requests, in wrk chunks sized from the last rate."""
    env = {"USERS": str(args.users)}
    before = server.rss()["rss_kib"]
    done, rate, chunk = 0, 0.0, 0
    checkpoints: list[dict[str, Any]] = []
    errors = 0
    for target in (args.memory_first, args.memory_requests):
        while done < target:
            if not server.alive():
                raise BenchError(f"the server died after {done} requests:\n{server.log_tail()}")
            # aim a little short (the rate drifts): a 1 s chunk then tops it up
            seconds = 2 if rate == 0 else max(1, min(60, int(0.9 * (target - done) / rate)))
            chunk += 1
            wrk_out = out / f"memory_{chunk:03d}.wrk"
            result = common.run_wrk(
                server.url, "users_id.lua", args.memory_conc, seconds, wrk_out, env, latency=False
            )
            done += result.requests
            rate = result.rps or 1.0
            errors += result.non2xx + result.socket_errors_total
            rss = server.rss()["rss_kib"]
            checkpoints.append({"requests": done, "rss_kib": rss, "rps": result.rps})
            log(f"   {done:>9} requests  rps={result.rps:>8.1f}  RSS={rss / 1024:.1f} MiB")
    first = next(c for c in checkpoints if c["requests"] >= args.memory_first)
    last = checkpoints[-1]
    return {
        "rss_before_kib": before,
        "first": first,
        "last": last,
        "ratio_last_first": last["rss_kib"] / first["rss_kib"] if first["rss_kib"] else math.nan,
        "errors": errors,
        "checkpoints": checkpoints,
    }


# ------------------------------------------------------------------------------------ report


def summarize(
    report: Report, runs: list[dict[str, Any]], pgb: dict[str, Any] | None
) -> dict[str, Any]:
    headers = ["scenario", "conc", "rps", "p50 ms", "p99 ms", "max ms", "non2xx", "sock err"]
    rows = []
    for r in runs:
        if r["status"] != "ok":
            rows.append([r["label"], r["conc"], "FAILED", "", "", "", "", ""])
            continue
        pct = r["percentiles_ms"]
        rows.append(
            [
                r["label"],
                r["conc"],
                fmt(r["rps"]),
                fmt(pct.get("50", math.nan), 2),
                fmt(pct.get("99", math.nan), 2),
                fmt(r["latency_max_ms"], 2),
                r["non2xx"],
                sum(r["socket_errors"].values()),
            ]
        )
    report.add(common.format_table(headers, rows))
    for r in runs:
        odd = {code: n for code, n in r.get("statuses", {}).items() if not code.startswith("2")}
        if odd or (r["status"] == "ok" and sum(r["socket_errors"].values())):
            report.add(
                f"  ! {r['label']} c={r['conc']}: statuses {r.get('statuses')} "
                f"socket errors {r.get('socket_errors')}"
            )
    ratios: dict[str, Any] = {}
    if pgb is not None:
        report.add("")
        report.add(
            f"pgbench (SQL of GET /users/{{id}}, -M prepared -c {pgb['clients']} -j 2): "
            f"tps={fmt(pgb['tps'])}  latency avg={fmt(pgb['latency_avg_ms'], 2)} ms  "
            f"failed={pgb['failed']}"
        )
        report.add(
            f"  ({pgb['clients']} clients, not 256: max_connections is {pgb['max_connections']} "
            "here (100 by default), so 256 pgbench connections would not fit)"
        )
        for r in runs:
            if r["scenario"] == "users_id" and r["status"] == "ok" and pgb["tps"]:
                ratio = r["rps"] / pgb["tps"]
                ratios[f"users_id_c{r['conc']}"] = ratio
                report.add(f"  GET /users/{{id}} c={r['conc']:<4} rps / pgbench tps = {ratio:.3f}")
    return ratios


def draw_charts(out: Path) -> None:
    """bench.png/.svg (and compare.png/.svg from the newest compare.sh run) beside results.json.
    Called once results.json and summary.txt are written, so a failure (matplotlib missing, a
    broken compare CSV) costs only the pictures: it is logged, and the exit code stays the runs'."""
    try:
        import chart  # here, not at the top: the measurements must not depend on matplotlib

        for path in chart.write_charts(out):
            log(f"== chart: {path}")
    except Exception as exc:
        log(f"bench: charts not drawn: {type(exc).__name__}: {exc}")
        log(f"   (redraw them with `make chart RESULTS={out}`)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_signal_handlers()
    try:
        pg, env_info, out, report = common.start_run("bench", "bench", args.out)
    except BenchError as exc:
        log(f"bench: ERROR: {exc}")
        return exc.exit_code
    mode = "memory-check" if args.memory_check else "scenarios"
    results: dict[str, Any] = {"mode": mode, "args": vars(args), "environment": env_info}
    env = common.app_env(pg, args.db, secrets.token_urlsafe(32))
    env["ACCESS_TOKEN_EXPIRE_MINUTES"] = "240"  # tokens outlive a long run
    exit_code = 0
    try:
        seed(pg, args, env, out, report)
        with Server(env, out / "server.log") as server:
            log(f"== server on {server.url} (pid {server.proc.pid if server.proc else '?'})")
            server.wait_ready()
            results["rss_at_start"] = server.rss()
            smoke_check(server.url, args.users, args.posts)
            tokens_file = None
            if "posts_create" in args.scenarios and not args.memory_check:
                log(f"== logging in {args.token_users} users for POST /posts")
                tokens_file = out / "tokens.txt"
                tokens = login_tokens(server.url, args.users, args.token_users, args.password)
                tokens_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
            results["rss_before"] = server.rss()
            if args.memory_check:
                log(f"== memory check: {args.memory_requests} x GET /users/{{id}}")
                results["memory"] = memory_check(server, args, out)
            else:
                log(f"== runs: {args.scenarios} x c={args.concs}, {args.duration}s each")
                results["runs"] = run_scenarios(server, args, out, tokens_file)
            results["rss_after"] = server.rss()
        problems = common.log_problems(out / "server.log")
        results["server_log_problems"] = problems[:50]
        pgb = None
        if not args.memory_check:
            log(f"== pgbench: SQL of GET /users/{{id}}, {args.pgbench_conc} clients")
            pgb = pgbench_ceiling(pg, args, out)
            results["pgbench"] = pgb
        report.add("")
        if args.memory_check:
            mem = results["memory"]
            first, last = mem["first"], mem["last"]
            report.add(
                f"memory check, GET /users/{{id}} c={args.memory_conc}: RSS before "
                f"{mem['rss_before_kib'] / 1024:.1f} MiB; after {first['requests']} requests "
                f"{first['rss_kib'] / 1024:.1f} MiB; after {last['requests']} "
                f"{last['rss_kib'] / 1024:.1f} MiB; ratio last/first "
                f"{mem['ratio_last_first']:.3f}; non-2xx + socket errors {mem['errors']}"
            )
        else:
            results["ratios"] = summarize(report, results["runs"], pgb)
            if any(r["status"] != "ok" for r in results["runs"]):
                exit_code = 1
        before, after = results["rss_before"]["rss_kib"], results["rss_after"]["rss_kib"]
        report.add(
            f"server RSS: before {before / 1024:.1f} MiB, after {after / 1024:.1f} MiB "
            f"({(after - before) / 1024:+.1f} MiB)"
        )
        report.add(f"server log: {len(problems)} warning/error line(s)")
        for line in problems[:5]:
            report.add(f"  {line[:300]}")
    except BenchError as exc:
        log(f"bench: ERROR: {exc}")
        results["error"] = str(exc)
        exit_code = exc.exit_code
    except KeyboardInterrupt:
        log("bench: interrupted")
        results["error"] = "interrupted"
        exit_code = 130
    finally:
        common.write_json(out / "results.json", results)
        report.write(out / "summary.txt")
        if not args.keep_db:
            try:
                pg.drop(args.db)
            except Exception as exc:
                log(f"bench: could not drop {args.db}: {exc}")
    log(f"== results: {out}/results.json, summary.txt")
    if not args.memory_check and results.get("runs"):
        draw_charts(out)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

"""`make bench-transfers`: POST /transfers throughput on PostgreSQL, then the ledger invariants.

Steps: drop+create the database, `asyncblog migrate` + `seed`, a deposit of 1,000,000.00 for every
user (set-based SQL, one transaction), access tokens minted in-process with the server's fixed
SECRET_KEY, `asyncblog serve --workers 1`; per variant (random: uniform over all users; hot: 90 % of
transfers among users 1..10) x concurrency a warm-up and one `wrk` run counting statuses; pgbench's
built-in TPC-B-like script on its own database as the ceiling; finally the invariants (no negative
balance, balances sum to deposits, every balance matches its ledger): PASS, or FAIL and exit 1.
Results: bench-results/transfers_<timestamp>/.

    .venv/bin/python bench/transfers.py --duration 3s --warmup 1 --concs 16 64
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import math
import os
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import common
import httpx
from common import BenchError, Pg, Report, Server, fmt, log

from asyncblog.security import TokenCodec

SECRET = "asyncblog-bench-transfers-fixed-secret-key-not-for-production"  # bench databases only
DEPOSIT = Decimal("1000000.00")
VARIANTS = ("random", "hot")

FUND_SQL = [
    "INSERT INTO transfers (from_user_id, to_user_id, amount, created_at) "
    f"SELECT NULL, id, {DEPOSIT}, now() FROM users",
    f"UPDATE users SET balance = {DEPOSIT}",
]
NEGATIVE_SQL = "SELECT count(*) FROM users WHERE balance < 0"
SUMS_SQL = """
SELECT (SELECT coalesce(sum(balance), 0) FROM users) AS balances,
       (SELECT coalesce(sum(amount), 0) FROM transfers WHERE from_user_id IS NULL) AS deposits
"""
# deposits are ledger rows with from_user_id NULL, so "received" includes them
MISMATCH_SQL = """
SELECT count(*) FROM users AS u
LEFT JOIN (SELECT to_user_id AS id, sum(amount) AS amount FROM transfers GROUP BY to_user_id)
    AS received ON received.id = u.id
LEFT JOIN (SELECT from_user_id AS id, sum(amount) AS amount FROM transfers
           WHERE from_user_id IS NOT NULL GROUP BY from_user_id)
    AS sent ON sent.id = u.id
WHERE u.balance <> coalesce(received.amount, 0) - coalesce(sent.amount, 0)
"""
LEDGER_TRANSFERS_SQL = "SELECT count(*) FROM transfers WHERE from_user_id IS NOT NULL"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1000, help="users to seed")
    parser.add_argument("--posts", type=int, default=0, help="posts per user to seed")
    parser.add_argument("--duration", type=common.parse_duration, default="10s", help="per run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run")
    parser.add_argument("--concs", type=int, nargs="+", default=[16, 64, 256], help="wrk -c")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--hot-users", type=int, default=10, help="the hot variant's users")
    parser.add_argument("--hot-share", type=float, default=0.9, help="hot variant: share of hot")
    parser.add_argument(
        "--db",
        default=os.environ.get("TRANSFERS_DB", "asyncblog_transfers"),
        help="database to drop, create and seed (env TRANSFERS_DB)",
    )
    parser.add_argument(
        "--pgbench-db",
        default=os.environ.get("PGBENCH_DB", "asyncblog_pgbench"),
        help="database for pgbench -i (env PGBENCH_DB)",
    )
    parser.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i -s")
    parser.add_argument("--pgbench-conc", type=int, default=64, help="pgbench clients")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the databases")
    parser.add_argument("--out", type=Path, default=None, help="results base dir (bench-results/)")
    args = parser.parse_args(argv)
    for name in (args.db, args.pgbench_db):
        problem = common.db_name_problem(name)
        if problem:
            parser.error(problem)
    if args.db == args.pgbench_db:
        parser.error("--db and --pgbench-db must differ")
    if args.users < 2 or min(args.concs) < 1 or args.warmup < 0:
        parser.error("need --users >= 2, --concs >= 1, --warmup >= 0")
    if not 2 <= args.hot_users <= args.users or not 0 <= args.hot_share <= 1:
        parser.error("need 2 <= --hot-users <= --users and 0 <= --hot-share <= 1")
    return args


# ------------------------------------------------------------------------------------ setup


def mint_token(user_id: int, hashed_password: str) -> str:
    """An access token the server accepts, made here instead of 1000 Argon2 logins.

    `TokenCodec.issue(user_id)`; newer versions of the app also stamp the token with the user's
    password hash (`issue(user_id, hashed_password)`), so pass it when the signature asks for it.
    """
    issue: Callable[..., str] = TokenCodec(SECRET, dt.timedelta(hours=2)).issue
    if "hashed_password" in inspect.signature(issue).parameters:
        return issue(user_id, hashed_password)
    return issue(user_id)


def prepare(
    pg: Pg, args: argparse.Namespace, env: dict[str, str], out: Path, report: Report
) -> Path:
    """Database seeded and funded; returns the tokens file ("<id> <token>" per line)."""
    log(f"== database {args.db}: drop + create, migrate, seed {args.users} x {args.posts}, fund")
    pg.recreate(args.db)
    took = common.migrate_and_seed(env, args.users, args.posts, out / "seed.log")
    pg.execute_in_transaction(args.db, FUND_SQL)
    rows = pg.fetch(args.db, "SELECT id, hashed_password FROM users ORDER BY id")
    if len(rows) != args.users:
        raise BenchError(f"after seeding: {len(rows)} users, expected {args.users}")
    tokens_file = out / "tokens.txt"
    tokens_file.write_text(
        "".join(f"{r['id']} {mint_token(r['id'], r['hashed_password'])}\n" for r in rows),
        encoding="utf-8",
    )
    report.add(
        f"seeded {args.users} users in {took:.1f}s into {args.db}, each funded with {DEPOSIT}"
    )
    return tokens_file


def smoke_check(url: str, tokens_file: Path) -> None:
    """The minted tokens work (GET /users/me), without moving any money."""
    user_id, token = tokens_file.read_text(encoding="utf-8").split("\n", 1)[0].split()
    response = httpx.get(
        f"{url}/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    if response.status_code != 200 or response.json().get("id") != int(user_id):
        raise BenchError(
            f"GET /users/me with a minted token: {response.status_code} {response.text}"
        )
    if response.json().get("balance") != f"{DEPOSIT}":
        raise BenchError(f"user {user_id}'s balance is {response.json().get('balance')!r}")


# ------------------------------------------------------------------------------------ runs


def split_statuses(statuses: dict[str, int]) -> dict[str, int]:
    known = {code: statuses.get(code, 0) for code in ("201", "409", "503")}
    other = sum(n for code, n in statuses.items() if code not in known)
    return {"s201": known["201"], "s409": known["409"], "s503": known["503"], "other": other}


def run_variants(
    server: Server, args: argparse.Namespace, out: Path, tokens_file: Path
) -> tuple[list[dict[str, Any]], int, int]:
    """Every variant x concurrency. Also returns the 201s seen in all wrk runs, warm-ups
    included, and how many requests can have been in flight when those runs stopped."""
    runs: list[dict[str, Any]] = []
    created = in_flight = 0
    for variant in args.variants:
        env = {
            "TOKENS_FILE": str(tokens_file),
            "MODE": variant,
            "HOT_USERS": str(args.hot_users),
            "HOT_SHARE": str(args.hot_share),
        }
        for conc in args.concs:
            if not server.alive():
                raise BenchError(
                    f"the server is gone before {variant} c={conc}:\n{server.log_tail()}"
                )
            tag = f"transfers_{variant}_c{conc}"
            row: dict[str, Any] = {"variant": variant, "conc": conc}
            try:
                if args.warmup:
                    warm = out / f"{tag}.warmup.wrk"
                    result = common.run_wrk(
                        server.url, "transfers.lua", conc, args.warmup, warm, env
                    )
                    created += result.statuses.get(201, 0)
                    in_flight += conc
                result = common.run_wrk(
                    server.url, "transfers.lua", conc, args.duration, out / f"{tag}.wrk", env
                )
            except BenchError as exc:
                log(f"   {variant} c={conc}: FAILED: {exc}")
                runs.append({**row, "status": "failed", "error": str(exc)})
                continue
            created += result.statuses.get(201, 0)
            in_flight += conc
            data = result.to_json()
            counts = split_statuses(data["statuses"])
            tps = counts["s201"] / result.duration_s if result.duration_s else math.nan
            runs.append({**row, "status": "ok", **data, **counts, "transfers_per_s": tps})
            log(
                f"   {variant:<6} c={conc:<4} transfers/s={tps:>8.1f} p50={fmt(result.p('50'))}ms "
                f"p99={fmt(result.p('99'))}ms statuses={data['statuses']} "
                f"sockerr={result.socket_errors_total}"
            )
    return runs, created, in_flight


def pgbench_ceiling(pg: Pg, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """pgbench's TPC-B-like script on its own database."""
    pg.recreate(args.pgbench_db)
    init = [common.PGBENCH, *pg.cli_args(), "-i", "-q", "-s", str(args.pgbench_scale)]
    common.run_logged([*init, args.pgbench_db], dict(os.environ), out / "pgbench_init.log")
    base = ["-M", "prepared", "-c", str(args.pgbench_conc), "-j", "2"]
    if args.warmup:
        common.run_pgbench(
            pg, args.pgbench_db, [*base, "-T", str(args.warmup)], out / "pgbench.warmup.txt"
        )
    result = common.run_pgbench(
        pg, args.pgbench_db, [*base, "-T", str(args.duration)], out / "pgbench.txt"
    )
    return result.to_json()


def check_invariants(pg: Pg, db: str) -> dict[str, Any]:
    negative = int(pg.fetchval(db, NEGATIVE_SQL))
    sums = pg.fetch(db, SUMS_SQL)[0]
    mismatching = int(pg.fetchval(db, MISMATCH_SQL))
    checks = {
        "no negative balance": negative == 0,
        "sum(balance) == sum(deposits)": sums["balances"] == sums["deposits"],
        "every balance == deposits + received - sent": mismatching == 0,
    }
    return {
        "negative_balances": negative,
        "sum_balances": str(sums["balances"]),
        "sum_deposits": str(sums["deposits"]),
        "mismatching_users": mismatching,
        "ledger_transfers": int(pg.fetchval(db, LEDGER_TRANSFERS_SQL)),
        "checks": checks,
        "pass": all(checks.values()),
    }


# ------------------------------------------------------------------------------------ report


def summarize(report: Report, runs: list[dict[str, Any]], pgb: dict[str, Any] | None) -> None:
    headers = ["variant", "conc", "transfers/s", "p50 ms", "p99 ms", "max ms"]
    headers += ["201", "409", "503", "other", "errors", "sock err", "/pgbench"]
    rows = []
    for r in runs:
        if r["status"] != "ok":
            rows.append([r["variant"], r["conc"], "FAILED", *[""] * 10])
            continue
        pct = r["percentiles_ms"]
        ratio = r["transfers_per_s"] / pgb["tps"] if pgb and pgb["tps"] else math.nan
        r["ratio_pgbench"] = ratio
        rows.append(
            [
                r["variant"],
                r["conc"],
                fmt(r["transfers_per_s"]),
                fmt(pct.get("50", math.nan), 2),
                fmt(pct.get("99", math.nan), 2),
                fmt(r["latency_max_ms"], 2),
                r["s201"],
                r["s409"],
                r["s503"],
                r["other"],
                r["s503"] + r["other"],
                sum(r["socket_errors"].values()),
                fmt(ratio, 3),
            ]
        )
    report.add(common.format_table(headers, rows))
    report.add("  errors = responses other than 201/409; /pgbench = transfers/s / pgbench tps")
    for r in runs:
        odd = {c: n for c, n in r.get("statuses", {}).items() if c not in ("201", "409")}
        if odd or (r["status"] == "ok" and sum(r["socket_errors"].values())):
            report.add(
                f"  ! {r['variant']} c={r['conc']}: statuses {r['statuses']} "
                f"socket errors {r['socket_errors']}"
            )
    if pgb is not None:
        report.add("")
        report.add(
            f"pgbench TPC-B-like (-s {pgb.get('scale', '?')}, -M prepared "
            f"-c {pgb['clients']} -j 2): "
            f"tps={fmt(pgb['tps'])}  latency avg={fmt(pgb['latency_avg_ms'], 2)} ms  "
            f"failed={pgb['failed']}"
        )


def report_invariants(report: Report, inv: dict[str, Any], created: int, in_flight: int) -> None:
    report.add("")
    report.add(f"invariants: {'PASS' if inv['pass'] else 'FAIL'}")
    report.add(f"  negative balances: {inv['negative_balances']}")
    report.add(f"  sum(balance) = {inv['sum_balances']}, sum(deposits) = {inv['sum_deposits']}")
    report.add(f"  users whose balance != deposits + received - sent: {inv['mismatching_users']}")
    # wrk stops with requests in flight (up to C per run): the server commits them unseen
    extra = inv["ledger_transfers"] - created
    verdict = "ok" if 0 <= extra <= in_flight else "UNEXPECTED"
    report.add(
        f"  (info) ledger transfers {inv['ledger_transfers']} - 201s seen by wrk {created} = "
        f"{extra}; in flight when wrk runs stopped: at most {in_flight}: {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_signal_handlers()
    try:
        pg, env_info, out, report = common.start_run("transfers bench", "transfers", args.out)
    except BenchError as exc:
        log(f"bench-transfers: ERROR: {exc}")
        return exc.exit_code
    results: dict[str, Any] = {"args": vars(args), "environment": env_info}
    env = common.app_env(pg, args.db, SECRET)
    exit_code = 0
    keep = args.keep_db
    try:
        tokens_file = prepare(pg, args, env, out, report)
        with Server(env, out / "server.log") as server:
            log(f"== server on {server.url}")
            server.wait_ready()
            smoke_check(server.url, tokens_file)
            results["rss_before"] = server.rss()
            log(f"== runs: {args.variants} x c={args.concs}, {args.duration}s each")
            runs, created, in_flight = run_variants(server, args, out, tokens_file)
            results["runs"] = runs
            results["rss_after"] = server.rss()
        problems = common.log_problems(out / "server.log")
        results["server_log_problems"] = problems[:50]
        log(f"== pgbench TPC-B-like on {args.pgbench_db} (-s {args.pgbench_scale})")
        pgb = pgbench_ceiling(pg, args, out)
        pgb["scale"] = args.pgbench_scale
        results["pgbench"] = pgb
        log("== invariants")
        inv = check_invariants(pg, args.db)
        results["invariants"] = inv
        report.add("")
        summarize(report, runs, pgb)
        report_invariants(report, inv, created, in_flight)
        results["ledger_vs_201"] = {"created": created, "in_flight_max": in_flight}
        before, after = results["rss_before"]["rss_kib"], results["rss_after"]["rss_kib"]
        report.add(f"server RSS: before {before / 1024:.1f} MiB, after {after / 1024:.1f} MiB")
        report.add(f"server log: {len(problems)} warning/error line(s)")
        for line in problems[:5]:
            report.add(f"  {line[:300]}")
        if not inv["pass"]:
            exit_code, keep = 1, True
            report.add(f"INVARIANTS FAILED: database {args.db} kept for inspection")
        elif any(r["status"] != "ok" for r in runs):
            exit_code = 1
    except BenchError as exc:
        log(f"bench-transfers: ERROR: {exc}")
        results["error"] = str(exc)
        exit_code = exc.exit_code
    except KeyboardInterrupt:
        log("bench-transfers: interrupted")
        results["error"] = "interrupted"
        exit_code = 130
    finally:
        common.write_json(out / "results.json", results)
        report.write(out / "summary.txt")
        if not keep:
            for db in (args.db, args.pgbench_db):
                try:
                    pg.drop(db)
                except Exception as exc:
                    log(f"bench-transfers: could not drop {db}: {exc}")
    log(f"== results: {out}/results.json, summary.txt")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

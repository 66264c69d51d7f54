"""Shared pieces of the benchmark scripts: PostgreSQL databases, the server, wrk, pgbench, output.

Used by bench/run.py and bench/transfers.py; standard library plus asyncpg and httpx (the venv's).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = ROOT / "bench" / "lua"
ASYNCBLOG = ROOT / ".venv" / "bin" / "asyncblog"
RESULTS_ROOT = ROOT / "bench-results"
WRK = os.environ.get("WRK", "wrk")
PGBENCH = os.environ.get("PGBENCH", "pgbench")
WRK_TIMEOUT = "30s"  # wrk's default 2s would silently drop slow requests from the histogram
STOP_GRACE_S = 10.0
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


class BenchError(Exception):
    """A step failed; the message is for humans. exit_code 2 = precondition, 1 = a run failed."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def log(message: str) -> None:
    print(message, flush=True)


def db_name_problem(name: str) -> str | None:
    """Why `name` may not be a bench database (dropped and recreated!), or None if it may."""
    if not IDENTIFIER.match(name):
        return f"database name {name!r} is not a plain identifier [A-Za-z_][A-Za-z0-9_]*"
    if name.lower() in ("postgres", "template0", "template1"):
        return f"refusing to drop and recreate the database {name!r}"
    return None


def identifier(name: str) -> str:
    """`name` if it is a plain SQL identifier (so it can be quoted safely), else BenchError."""
    if not IDENTIFIER.match(name):
        raise BenchError(f"not a plain identifier: {name!r}", 2)
    return name


def parse_duration(text: str) -> int:
    """'10s', '10', '2m' -> seconds (wrk's and pgbench's durations are whole seconds here)."""
    match = re.fullmatch(r"(\d+)([smh]?)", text.strip())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 10s, 2m)")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def install_signal_handlers() -> None:
    """SIGTERM behaves like Ctrl-C, so `finally` blocks stop the server either way."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BenchError(f"not found on PATH: {', '.join(missing)}", 2)
    if not ASYNCBLOG.exists():
        raise BenchError(f"{ASYNCBLOG} not found: run `make test` or `make run` once first", 2)


def results_dir(prefix: str, base: Path | None = None) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    path = (base or RESULTS_ROOT) / f"{prefix}_{stamp}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------ PostgreSQL


@dataclass(frozen=True, slots=True)
class Pg:
    host: str = os.environ.get("PGHOST", "127.0.0.1")
    port: int = int(os.environ.get("PGPORT", "5432"))
    user: str = os.environ.get("PGUSER", "postgres")

    def dsn(self, db: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{identifier(db)}"

    def app_url(self, db: str) -> str:
        """The DATABASE_URL for asyncblog."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{identifier(db)}"

    def cli_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def fetch(self, db: str, sql: str, *params: Any) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn(db))
            try:
                return list(await conn.fetch(sql, *params))
            finally:
                await conn.close()

        return asyncio.run(go())

    def fetchval(self, db: str, sql: str, *params: Any) -> Any:
        rows = self.fetch(db, sql, *params)
        return rows[0][0] if rows else None

    def execute_in_transaction(self, db: str, statements: Sequence[str]) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.dsn(db))
            try:
                async with conn.transaction():
                    for sql in statements:
                        await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())

    def recreate(self, db: str) -> None:
        """DROP (forcing other sessions out) and CREATE the database."""
        self._admin(
            f'DROP DATABASE IF EXISTS "{identifier(db)}" WITH (FORCE)', f'CREATE DATABASE "{db}"'
        )

    def drop(self, db: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{identifier(db)}" WITH (FORCE)')

    def check_reachable(self) -> str:
        """The server version; BenchError (precondition) when PostgreSQL cannot be reached."""
        try:
            return str(self.fetchval("postgres", "SHOW server_version"))
        except (OSError, asyncpg.PostgresError) as exc:
            raise BenchError(
                f"PostgreSQL not reachable at {self.host}:{self.port} as {self.user}: {exc}", 2
            ) from None

    def _admin(self, *statements: str) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.dsn("postgres"))
            try:
                for sql in statements:
                    await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())


def run_logged(cmd: Sequence[str], env: dict[str, str], log_path: Path) -> None:
    """Run a setup command (migrate, seed, pgbench -i) with its output appended to log_path."""
    with log_path.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
        command = " ".join(cmd)
        raise BenchError(f"`{command}` failed (rc={proc.returncode}); see {log_path}:\n{tail}")


def app_env(pg: Pg, db: str, secret: str, **extra: str) -> dict[str, str]:
    """The environment for asyncblog commands: ours over the caller's (POOL_SIZE etc. pass)."""
    env = dict(os.environ)
    env.update(DATABASE_URL=pg.app_url(db), SECRET_KEY=secret, ACCESS_LOG="false", **extra)
    return env


def migrate_and_seed(env: dict[str, str], users: int, posts: int, log_path: Path) -> float:
    """`asyncblog migrate` + `asyncblog seed`; returns the seconds it took."""
    started = time.perf_counter()
    run_logged([str(ASYNCBLOG), "migrate"], env, log_path)
    seed = [str(ASYNCBLOG), "seed", "--users", str(users), "--posts-per-user", str(posts)]
    run_logged(seed, env, log_path)
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pids_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """`asyncblog serve --workers N` (1 by default) on a free port, in its own process group; a
    context manager that always stops it (TERM the group, KILL after 10 s), also on Ctrl-C and
    errors."""

    def __init__(
        self, env: dict[str, str], log_path: Path, host: str = "127.0.0.1", workers: int = 1
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.host = host
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Server:
        cmd = [str(ASYNCBLOG), "serve", "--host", self.host, "--port", str(self.port)]
        cmd += ["--workers", str(self.workers)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"the server exited during startup:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}/healthz", timeout=5)
                if response.status_code == 200:
                    return
                last = f"status {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise BenchError(f"/healthz not 200 within {timeout:.0f}s ({last}):\n{self.log_tail()}")

    def rss(self) -> dict[str, Any]:
        """VmRSS of every process of the server's group (one with --workers 1)."""
        if self.proc is None:
            return {"pids": [], "rss_kib": 0}
        pids = _pids_in_group(self.proc.pid) or [self.proc.pid]
        return {"pids": pids, "rss_kib": sum(rss_kib(p) for p in pids)}

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the leader so a zombie does not count as alive
            if not _pids_in_group(pgid):
                break
            time.sleep(0.1)
        else:
            log(f"   (server group {pgid} ignored SIGTERM for {STOP_GRACE_S:.0f}s: SIGKILL)")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def cpu_seconds(server: Server) -> float:
    """User + system CPU time of every process of the server's group."""
    total = 0
    for pid in server.rss()["pids"]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def finish_run(
    name: str, pg: Pg, db: str, out: Path, results: dict[str, Any], report: Report
) -> None:
    """What every run leaves, also after an error: results.json, summary.txt, no database."""
    write_json(out / "results.json", results)
    report.write(out / "summary.txt")
    try:
        pg.drop(db)
    except Exception as exc:
        log(f"{name}: could not drop {db}: {exc}")
    log(f"== results: {out}/summary.txt")


def measured_run(
    server: Server,
    script: str,
    conc: int,
    warmup: int,
    duration: int,
    out: Path,
    label: str,
    wrk_env: dict[str, str],
) -> dict[str, Any]:
    """A warm-up, then one wrk run with the server's CPU time read around it: requests/s, p99,
    CPU per request (the server's CPU-bound share, steadier than requests/s), errors."""
    if warmup:
        run_wrk(server.url, script, conc, warmup, out / f"{label}.warmup.wrk", wrk_env, False)
    before = cpu_seconds(server)
    result = run_wrk(server.url, script, conc, duration, out / f"{label}.wrk", wrk_env)
    cpu = cpu_seconds(server) - before
    requests = result.rps * duration
    return {
        "label": label,
        "rps": result.rps,
        "p99_ms": result.p("99"),
        "cpu_us_per_request": cpu / requests * 1e6 if requests else math.nan,
        "errors": result.non2xx + result.socket_errors_total,
    }


def log_problems(log_path: Path) -> list[str]:
    """Server log lines worth a look: JSON lines at WARNING or above, anything else that says
    error/exception/traceback."""
    problems = []
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            if entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                problems.append(line)
        elif re.search(r"error|exception|traceback", line, re.IGNORECASE):
            problems.append(line)
    return problems


# ------------------------------------------------------------------------------------ wrk


@dataclass(slots=True)
class WrkResult:
    rps: float
    requests: int
    duration_s: float
    latency_avg_ms: float
    latency_max_ms: float
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    non2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def socket_errors_total(self) -> int:
        return sum(self.socket_errors.values())

    def p(self, pct: str) -> float:
        return self.percentiles_ms.get(pct, math.nan)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["statuses"] = {str(k): v for k, v in self.statuses.items()}
        return data


def to_ms(token: str) -> float:
    """A wrk time (812.00us, 3.21ms, 1.02s, 1.00m, 1.00h) in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", token)
    if not match:
        return math.nan
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
    return float(match.group(1)) * scale[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """wrk's report (with or without --latency, plus our STATUS_COUNTS line) as a WrkResult."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", text, re.MULTILINE)
    if not rps or not total:
        raise BenchError(f"cannot parse wrk's output:\n{text[-2000:]}")
    latency = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.MULTILINE)
    result = WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        duration_s=to_ms(total.group(2)) / 1000,
        latency_avg_ms=to_ms(latency.group(1)) if latency else math.nan,
        latency_max_ms=to_ms(latency.group(3)) if latency else math.nan,
    )
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.MULTILINE):
        result.percentiles_ms[pct] = to_ms(value)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    result.non2xx = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    kinds = ("connect", "read", "write", "timeout")
    result.socket_errors = {
        k: int(errors.group(i + 1)) if errors else 0 for i, k in enumerate(kinds)
    }
    counts = re.search(r"^STATUS_COUNTS(.*)$", text, re.MULTILINE)
    if counts:
        for code, n in re.findall(r"(\d+)=(\d+)", counts.group(1)):
            result.statuses[int(code)] = int(n)
    return result


def run_wrk(
    url: str,
    script: str,
    conc: int,
    duration_s: int,
    out_path: Path,
    env: dict[str, str] | None = None,
    latency: bool = True,
) -> WrkResult:
    """`wrk -t1 -cC -dD --timeout 30s [--latency] -s bench/lua/<script>`; the report is saved."""
    cmd = [WRK, "-t1", f"-c{conc}", f"-d{duration_s}s", "--timeout", WRK_TIMEOUT]
    cmd += ["--latency"] if latency else []
    cmd += ["-s", str(LUA_DIR / script), url]
    proc = subprocess.run(
        cmd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
        check=False,
    )
    text = f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    out_path.write_text(text, encoding="utf-8")
    if proc.returncode != 0:
        raise BenchError(f"wrk failed (rc={proc.returncode}), see {out_path}:\n{text[-1500:]}")
    return parse_wrk(proc.stdout)


# ------------------------------------------------------------------------------------ pgbench


@dataclass(slots=True)
class PgbenchResult:
    tps: float
    clients: int
    transactions: int
    failed: int
    latency_avg_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_pgbench(text: str) -> PgbenchResult:
    tps = re.search(r"^tps = ([\d.]+)", text, re.MULTILINE)
    if not tps:
        raise BenchError(f"cannot parse pgbench's output:\n{text[-2000:]}")

    def number(pattern: str, default: float = math.nan) -> float:
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else default

    return PgbenchResult(
        tps=float(tps.group(1)),
        clients=int(number(r"^number of clients: (\d+)", 0)),
        transactions=int(number(r"^number of transactions actually processed: (\d+)", 0)),
        failed=int(number(r"^number of failed transactions: (\d+)", 0)),
        latency_avg_ms=number(r"^latency average = ([\d.]+) ms"),
    )


def run_pgbench(pg: Pg, db: str, args: Sequence[str], out_path: Path) -> PgbenchResult:
    """`pgbench <args> <db>`; the report is saved to out_path."""
    cmd = [PGBENCH, *pg.cli_args(), *args, identifier(db)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    out_path.write_text(text, encoding="utf-8")
    if proc.returncode != 0:
        raise BenchError(f"pgbench failed (rc={proc.returncode}), see {out_path}:\n{text[-1500:]}")
    return parse_pgbench(proc.stdout)


# ------------------------------------------------------------------------------------ output


def fmt(value: float, digits: int = 1) -> str:
    return "NA" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def environment(pg: Pg) -> dict[str, Any]:
    """Facts that make a result file interpretable later."""

    def output(cmd: list[str]) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"n/a ({exc})"
        return (proc.stdout or proc.stderr).strip()

    def first_line(cmd: list[str]) -> str:
        return (output(cmd).splitlines() or [""])[0]

    git = ["git", "-C", str(ROOT)]
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": sys.version.split()[0],
        "git_rev": first_line([*git, "rev-parse", "--short", "HEAD"]),
        "git_changed_files": len(output([*git, "status", "--porcelain"]).splitlines()),
        "wrk": first_line([WRK, "-v"]),
        "pgbench": first_line([PGBENCH, "--version"]),
        "postgres": pg.check_reachable(),
        "pool_env": {
            k: os.environ[k] for k in ("POOL_SIZE", "POOL_MAX_OVERFLOW") if k in os.environ
        },
    }


class Report:
    """Lines printed now and kept for summary.txt."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, text: str = "") -> None:
        log(text)
        self.lines.append(text)

    def write(self, path: Path) -> None:
        path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")


def start_run(
    title: str, prefix: str, base: Path | None
) -> tuple[Pg, dict[str, Any], Path, Report]:
    """What every PostgreSQL bench does first: tools present, environment read, results dir
    made, the report's first line written. Raises BenchError."""
    pg = Pg()
    require_tools(WRK, PGBENCH)
    env_info = environment(pg)
    out = results_dir(prefix, base)
    log(f"== results dir: {out}")
    report = Report()
    report.add(
        f"asyncblog {title}  {env_info['date']}  git {env_info['git_rev']}  cpus "
        f"{env_info['cpus']}  load {' '.join(env_info['loadavg'])}  postgres {env_info['postgres']}"
    )
    return pg, env_info, out, report

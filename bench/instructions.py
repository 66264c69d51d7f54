"""Instructions per request on the event loop's thread, in process, under valgrind's callgrind.

Why: on this shared 2-core VM, requests/s and CPU seconds move by 10 to 30 % from one run to the
next, more than most single changes to the request path gain or lose. Callgrind counts
instructions instead of time: the same code, data and requests give the same count, whatever
else the machine does, so a change of 1 % shows. It measures CPU work only, not waiting (the
database's own threads and processes are counted apart, the network not at all): confirm a gain
with wrk (`make compare`) afterwards.

What runs: the app (or, with `--bare`, `../shared/bench/peers/bare_aiosqlite.py`) on a seeded
SQLite file, driven in process through ASGI (no HTTP, no uvicorn) by 64 tasks, each requesting
`--route` with a random id; callgrind counts only the measured requests (instrumentation is
switched on after a warm-up, with `callgrind_control`), per thread.

    make bench-instructions                       # GET /posts/{id}, 2,560 requests
    .venv/bin/python bench/instructions.py --route '/users/{}' --requests 1280 --bare

Needs valgrind (`apt-get install valgrind`). About a minute per run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

BARE_APP = common.ROOT.parent / "shared" / "bench" / "peers"
TASKS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", default="/posts/{}", help="the path, {} for a random id")
    parser.add_argument("--ids", type=int, default=30_000, help="ids drawn from 1..IDS")
    parser.add_argument("--requests", type=int, default=2560)
    parser.add_argument("--bare", action="store_true", help="the raw-aiosqlite app instead")
    parser.add_argument("--database", help="a seeded SQLite file (default: seed a new one)")
    parser.add_argument("--driver", help=argparse.SUPPRESS)  # the process under valgrind
    args = parser.parse_args()
    if args.driver:
        _drive(args, Path(args.driver))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="asyncblog-instructions-") as work:
        database = Path(args.database) if args.database else _seeded(Path(work) / "bench.db")
        print(_measure(args, Path(work), database))


def _seeded(path: Path) -> Path:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{path}"}
    common.migrate_and_seed(env, 10_000, 3, path.with_suffix(".log"))
    return path


def _measure(args: argparse.Namespace, work: Path, database: Path) -> str:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{database}"}
    env["SQLITE_PATH"] = str(database)
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={work}/callgrind.%p",
        sys.executable,
        __file__,
        *sys.argv[1:],
        "--driver",
        str(work),
    ]
    log = (work / "valgrind.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(work / "ready", process)
        _callgrind_control("on", process.pid)
        (work / "go").touch()
        _wait_for(work / "done", process)
        _callgrind_control("off", process.pid)
        (work / "exit").touch()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    counts = _instructions(work)
    main_thread = counts.pop(1, 0)
    others = sum(counts.values())
    per = args.requests
    statuses = (work / "done").read_text()
    app = "raw aiosqlite" if args.bare else "asyncblog"
    return (
        f"{app} {args.route}: {main_thread / per / 1000:.1f} thousand instructions per request "
        f"on the event loop's thread, {others / per / 1000:.1f} on the others "
        f"({per} requests, statuses {statuses})"
    )


def _wait_for(path: Path, process: subprocess.Popen[bytes]) -> None:
    while not path.exists():
        if process.poll() is not None:
            sys.exit(f"the measured process ended early; see {path.parent}/valgrind.log")
        time.sleep(0.2)


def _callgrind_control(instrumentation: str, pid: int) -> None:
    command = ["callgrind_control", "-i", instrumentation, str(pid)]
    subprocess.run(command, check=True, capture_output=True)


def _instructions(work: Path) -> dict[int, int]:
    """Instructions counted per thread (1: the main thread, which runs the event loop)."""
    counts: dict[int, int] = {}
    for out in work.glob("callgrind.*"):
        text = out.read_text(errors="replace")
        thread = re.search(r"^thread:\s*(\d+)", text, re.M)
        total = re.search(r"^totals:\s+(\d+)", text, re.M)  # ("summary:" is 0 here)
        if total is not None:
            counts[int(thread.group(1)) if thread else 1] = int(total.group(1))
    return counts


# ------------------------------------------------------------------ the process under valgrind


def _drive(args: argparse.Namespace, work: Path) -> None:
    import uvloop

    if args.bare:
        sys.path.insert(0, str(BARE_APP))
        import bare_aiosqlite

        app: Any = bare_aiosqlite.app
    else:
        from asyncblog.api.app import app_from_env

        app = app_from_env()
    uvloop.run(_requests(app, args, work))


async def _requests(app: Any, args: argparse.Namespace, work: Path) -> None:
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    running = asyncio.create_task(app(lifespan, startup.get, replies.put))  # until os._exit
    await startup.put({"type": "lifespan.startup"})
    await replies.get()
    statuses: dict[int, int] = {}
    rng = random.Random(7)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    async def client(count: int) -> None:
        for _ in range(count):
            path = args.route.format(rng.randint(1, args.ids))
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"bench"), (b"user-agent", b"wrk")],
                "client": ("127.0.0.1", 40000),
                "server": ("127.0.0.1", 8000),
                "state": {},
            }
            await app(scope, receive, send)

    await asyncio.gather(*(client(20) for _ in range(TASKS)))  # warm-up, not counted
    gc.collect()
    gc.freeze()
    statuses.clear()
    (work / "ready").touch()
    _block_until(work / "go")  # instrumentation is being switched on
    await asyncio.gather(*(client(args.requests // TASKS) for _ in range(TASKS)))
    (work / "done").write_text(repr(statuses))
    _block_until(work / "exit")
    running.cancel()
    os._exit(0)  # the lifespan's shutdown is not what is measured


def _block_until(path: Path) -> None:
    """Wait for the measuring process, the event loop stopped: nothing runs meanwhile."""
    while not path.exists():
        time.sleep(0.05)


if __name__ == "__main__":
    main()

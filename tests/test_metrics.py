"""`asyncblog serve --workers 2` with METRICS=true, for real: each worker counts in its own files
(prometheus-client's multiprocess mode), a scrape answered by either worker, or by `serve` itself
on METRICS_PORT, sums them; a worker killed and restarted keeps its counts but its live gauges
stop being summed. (One process: tests/api/test_metrics.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import httpx

from tests.fixtures.cluster import PgDatabase, free_port
from tests.fixtures.metrics import Scrape, counted_by_pid, scrape
from tests.fixtures.servers import ServerProcess, serving

USER_ROUTE = "/users/{user_id}"
POOL_SIZE = 3


def workers_of(server: ServerProcess) -> set[int]:
    """uvicorn's worker processes (multiprocessing's resource tracker is a child too)."""
    pid = server.process.pid
    workers = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(int(child))
    return workers


def served_by_pid(directory: Path) -> dict[int, float]:
    """GET /users/{user_id} answers counted in each process's own file."""
    return counted_by_pid(directory, "http_requests_total", USER_ROUTE)


async def spread_requests(base: str, user_id: int, directory: Path, workers: set[int]) -> int:
    """Reads on new connections in concurrent waves until each worker answered some (the kernel
    hands connections to whichever worker accepts first); how many were sent."""
    sent = 0
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        for _wave in range(20):
            answers = await asyncio.gather(*(client.get(f"/users/{user_id}") for _ in range(20)))
            assert {a.status_code for a in answers} == {200}
            sent += len(answers)
            counts = served_by_pid(directory)
            if all(counts.get(pid, 0) > 0 for pid in workers):
                return sent
    raise AssertionError(f"one worker took every connection: {served_by_pid(directory)}")


def exists(path: Path) -> bool:
    return path.exists()


def own_directories(parent: Path) -> list[Path]:
    return list(parent.glob("asyncblog-metrics-*"))


async def register(base: str) -> int:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        body = {"username": "metered", "email": "metered@example.com", "password": "password123"}
        response = await client.post("/users", json=body)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])


async def replaced(server: ServerProcess, dead: int, gone: Path, bound: float = 30) -> None:
    """Wait until the supervisor replaced `dead` and the new worker, starting, removed `gone`."""
    for _ in range(int(bound * 10)):
        workers = workers_of(server)
        if dead not in workers and len(workers) == 2 and not exists(gone):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"worker {dead} was not replaced, or its live gauges ({gone.name}) not removed, within "
        f"{bound}s:\n{server.output()}"
    )


async def test_any_worker_sums_every_workers_numbers_and_forgets_a_dead_ones_gauges(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    stale = directory / "counter_4242.db"
    stale.write_bytes(b"from an earlier run")  # summed into this run unless removed at start
    settings = {
        "WEB_CONCURRENCY": "2",
        "METRICS": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "POOL_SIZE": str(POOL_SIZE),
    }
    async with serving(pg_database.url, tmp_path, **settings) as server:
        assert not stale.exists()
        workers = workers_of(server)
        assert len(workers) == 2
        user_id = await register(server.base)
        sent = await spread_requests(server.base, user_id, directory, workers)

        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            # Whichever worker answers the scrape, it shows both workers' requests.
            scrapes: list[Scrape] = [await scrape(client) for _ in range(6)]
            for shown in scrapes:
                value = shown.value("http_requests_total", route=USER_ROUTE, status="200")
                assert value == sent
                observed = shown.value("http_request_duration_seconds_count", route=USER_ROUTE)
                assert observed == sent
            gauges = await scrape(client)
            assert gauges.value("asyncblog_db_gate_slots") == 2 * POOL_SIZE  # sampled at start

            dead = min(workers)
            os.kill(dead, signal.SIGKILL)
            live_gauges = directory / f"gauge_livesum_{dead}.db"
            assert live_gauges.exists()
            await replaced(server, dead, live_gauges)
            assert (directory / f"counter_{dead}.db").exists(), "its counts must stay"

            after = await scrape(client)
            assert after.value("http_requests_total", route=USER_ROUTE, status="200") == sent
            # The two live workers' slots, once the new one sampled (not the dead one's too).
            for _ in range(50):
                slots = (await scrape(client)).value("asyncblog_db_gate_slots")
                if slots == 2 * POOL_SIZE:
                    break
                await asyncio.sleep(0.1)
            assert slots == 2 * POOL_SIZE


async def test_metrics_port_is_answered_by_serve_with_every_workers_numbers(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    port = free_port()
    settings = {
        "WEB_CONCURRENCY": "2",
        "METRICS": "true",
        "METRICS_PORT": str(port),
        "TMPDIR": str(tmp_path),  # where serve makes its own metrics directory
    }
    async with serving(pg_database.url, tmp_path, **settings) as server:
        workers = workers_of(server)
        user_id = await register(server.base)
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            assert (await client.get("/metrics")).status_code == 404  # not on the API's port
        (own_dir,) = own_directories(tmp_path)
        sent = await spread_requests(server.base, user_id, own_dir, workers)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as metrics:
            shown = await scrape(metrics)
        assert shown.value("http_requests_total", route=USER_ROUTE, status="200") == sent
        server.process.send_signal(signal.SIGTERM)
        assert await server.exit_code(30) == 0
    assert not own_directories(tmp_path), "serve's own metrics directory is removed at the end"

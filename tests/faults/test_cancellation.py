"""Clients that go away mid-request, against a real `asyncblog serve` process on a PostgreSQL
database of the throwaway cluster (PostgreSQL-specific: pg_stat_activity is the witness).

Hundreds of raw-socket clients send a request (mostly POST /transfers) and then close the socket
at once, a moment later, with a reset, or halfway through the body, while another connection
keeps taking row locks so that transfers are inside their transactions when their clients
vanish. Afterwards: no connection of the app is left `idle in transaction`, none leaked, no
transfer is half applied, nothing was an unhandled server error, and the server still serves.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import orjson

from tests.fixtures.cluster import PgDatabase
from tests.fixtures.faults import Member, assert_invariants, ends_within, members, send
from tests.fixtures.servers import serving

CLIENTS = 2000
AT_ONCE = 120
STORM_SECONDS = 8  # stop launching new clients after this, whatever the count
MODES = ("close", "soon", "reset", "partial")  # "pipelined" has a test of its own
POOL = {"POOL_SIZE": "8", "POOL_MAX_OVERFLOW": "4", "POOL_TIMEOUT": "5"}


def raw_request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def random_request(rng: random.Random, port: int, users: list[Member]) -> bytes:
    a, b = rng.sample(users, 2)
    kind = rng.random()
    if kind < 0.7:
        body = orjson.dumps({"to_user_id": b.id, "amount": f"{rng.randint(1, 2000) / 100:.2f}"})
        headers = a.headers | {"Content-Type": "application/json"}
        if rng.random() < 0.2:
            headers["Idempotency-Key"] = f"k{rng.randint(1, 50)}"
        return raw_request(port, "POST", "/transfers", headers, body)
    if kind < 0.8:
        return raw_request(port, "GET", "/users/me", a.headers)
    if kind < 0.9:
        return raw_request(port, "GET", "/transfers", a.headers)
    if kind < 0.95:
        form = f"username={a.username}&password=password123".encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return raw_request(port, "POST", "/auth/token", headers, form)
    return raw_request(port, "GET", "/readyz", {})


async def hit_and_run(port: int, request: bytes, mode: str, delay: float) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if mode == "partial":
            writer.write(request[: max(len(request) - 10, 1)])
        elif mode == "pipelined":
            writer.write(request + request)
        else:
            writer.write(request)
        await writer.drain()
        if mode != "close":
            await asyncio.sleep(delay)
        if mode == "reset":  # RST instead of FIN
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        writer.close()


async def take_row_locks(dsn: str, users: list[Member], stop: asyncio.Event) -> int:
    """Keep locking a random user's row for a few ms: transfers queue inside their
    transactions, so clients vanish while the app holds a transaction open."""
    rng = random.Random(3)
    conn = await asyncpg.connect(dsn)
    taken = 0
    try:
        while not stop.is_set():
            async with conn.transaction():
                await conn.execute(
                    "SELECT id FROM users WHERE id = $1 FOR UPDATE", rng.choice(users).id
                )
                await asyncio.sleep(rng.uniform(0.01, 0.05))
            taken += 1
    finally:
        await conn.close()
    return taken


async def test_disconnecting_clients_leave_no_open_transaction_and_no_half_transfer(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    rng = random.Random(20240611)
    async with serving(pg_database.url, tmp_path, **POOL) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            _, users = await members(client, pg_database.engine, 6, "1000.00")

        stop = asyncio.Event()
        locker = asyncio.create_task(
            take_row_locks(pg_database.cluster.dsn(pg_database.name), users, stop)
        )
        gate = asyncio.Semaphore(AT_ONCE)
        outcomes: Counter[str] = Counter()

        async def one(i: int) -> None:
            mode = MODES[i % len(MODES)]
            request = random_request(rng, server.port, users)
            delay = rng.uniform(0, 0.03)
            try:
                await hit_and_run(server.port, request, mode, delay)
                outcomes[mode] += 1
            except OSError as exc:
                outcomes[type(exc).__name__] += 1
            finally:
                gate.release()

        started = time.monotonic()
        tasks = []
        for i in range(CLIENTS):
            if time.monotonic() - started > STORM_SECONDS:
                break
            await gate.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await ends_within(asyncio.gather(*tasks), "the disconnecting clients", 30)
        stop.set()
        locks_taken = await ends_within(locker, "the row locker", 10)
        assert sum(outcomes[m] for m in MODES) >= len(tasks) * 0.9, outcomes
        assert locks_taken > 0

        # The server works through what the vanished clients left; then nothing of the app may
        # still be inside a transaction.
        connections = await pg_database.app_connections()
        for _ in range(150):
            if all(c["state"] == "idle" for c in connections):
                break
            await asyncio.sleep(0.1)
            connections = await pg_database.app_connections()
        stuck = [c for c in connections if c["state"] != "idle"]
        assert not stuck, f"connections of the app not idle 15 s after the storm: {stuck}"
        assert len(connections) <= 12, f"more connections than POOL_SIZE + OVERFLOW: {connections}"

        await assert_invariants(pg_database.engine)

        # Still serving, with the same process.
        assert server.running, server.output()
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as client:
            ready = await ends_within(client.get("/readyz"), "/readyz after the storm")
            assert ready.status_code == 200, ready.text
            moved = await ends_within(send(client, users[0], users[1], "1.00"), "a transfer")
            assert moved.status_code == 201, moved.text
        output = server.output()
        assert "unhandled error" not in output, output[-5000:]
        assert "Traceback" not in output, output[-5000:]

    await assert_invariants(pg_database.engine)


async def test_a_client_leaving_with_a_pipelined_request_in_flight_is_not_a_server_error(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    """HTTP/1.1 pipelining: a client sends two transfers back to back and leaves while the first
    is still waiting inside the database. The first completes (or not) on its own; its answer
    has nowhere to go. That is the client's business: no transfer half applied, and nothing
    logged as an unhandled server error (a 500 in the logs, an alert in production)."""
    async with serving(pg_database.url, tmp_path, **POOL) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            _, (a, b) = await members(client, pg_database.engine, 2)
        body = orjson.dumps({"to_user_id": b.id, "amount": "1.00"})
        request = raw_request(
            server.port,
            "POST",
            "/transfers",
            a.headers | {"Content-Type": "application/json"},
            body,
        )
        holder = await asyncpg.connect(pg_database.cluster.dsn(pg_database.name))
        try:
            await holder.execute("BEGIN")
            await holder.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", a.id)
            for _ in range(5):  # each: the first transfer waits on the lock, the client leaves
                await hit_and_run(server.port, request, "pipelined", 0.05)
            await asyncio.sleep(0.2)
        finally:
            await holder.close()
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as client:
            moved = await ends_within(send(client, a, b, "1.00"), "a transfer afterwards")
            assert moved.status_code == 201, moved.text
        await assert_invariants(pg_database.engine)
        output = server.output()
        assert "unhandled error" not in output, output[-3000:]
        # The app notices the closed transport and stops writing (logged at INFO). uvicorn itself
        # then still logs "ASGI callable returned without completing response" at ERROR: with
        # uvloop it learns of the disconnect only for the queued request, not the one in flight
        # (MagicStack/uvloop#506, Kludex/uvicorn#1251). That line is upstream's, not ours.
        assert "client went away before the response" in output, output[-3000:]


async def app_in_a_lock_wait(db: PgDatabase, n: int = 1) -> list[dict[str, object]]:
    """The app's connections now waiting for a row lock: inside their transactions."""
    for _ in range(300):
        waiting = [c for c in await db.app_connections() if c["wait_event_type"] == "Lock"]
        if len(waiting) >= n:
            return waiting
        await asyncio.sleep(0.02)
    raise AssertionError(f"no request of the app waits for the lock: {await db.app_connections()}")


async def test_a_client_that_leaves_while_its_request_is_inside_a_transaction(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    """Deterministic counterpart of the storm: a transfer and an admin's bulk deletion (the ORM
    path) are each seen waiting for a row lock inside their transactions when their clients
    reset the connection. Each completes or rolls back as a whole; no connection of the app is
    left in a transaction; the session is closed; the same server serves on."""
    async with serving(pg_database.url, tmp_path, **POOL) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            admin, (a, b, gone) = await members(client, pg_database.engine, 3)
            emptied = await client.post(  # `gone` can be deleted: its balance back to zero
                "/transfers", json={"to_user_id": a.id, "amount": "100.00"}, headers=gone.headers
            )
            assert emptied.status_code == 201, emptied.text
        transfer = raw_request(
            server.port,
            "POST",
            "/transfers",
            a.headers | {"Content-Type": "application/json"},
            orjson.dumps({"to_user_id": b.id, "amount": "3.00"}),
        )
        bulk = raw_request(
            server.port,
            "DELETE",
            "/users/bulk",
            admin | {"Content-Type": "application/json"},
            orjson.dumps({"ids": [gone.id]}),
        )
        holder = await asyncpg.connect(pg_database.cluster.dsn(pg_database.name))
        try:
            await holder.execute("BEGIN")
            await holder.execute(
                "SELECT id FROM users WHERE id = ANY($1::int[]) FOR UPDATE", [a.id, gone.id]
            )
            clients = []
            for request in (transfer, bulk):
                _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(request)
                await writer.drain()
                clients.append(writer)
            waiting = await app_in_a_lock_wait(pg_database, 2)
            assert all(c["state"] == "active" for c in waiting), waiting
            for writer in clients:  # both requests are inside their transactions: reset
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
        finally:
            await holder.close()  # the locks go: the two requests go on without their clients

        connections = await pg_database.app_connections()
        for _ in range(150):
            if all(c["state"] == "idle" for c in connections):
                break
            await asyncio.sleep(0.1)
            connections = await pg_database.app_connections()
        assert all(c["state"] == "idle" for c in connections), connections
        book = await assert_invariants(pg_database.engine)
        # the emptying transfer, and the one whose client left: whole (2) or absent (1)
        assert len(book.transfer_ids) in (1, 2)
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as client:
            listed = await client.get(f"/users/{gone.id}")
            assert listed.status_code in (200, 404), listed.text
            moved = await ends_within(send(client, a, b, "1.00"), "a transfer afterwards")
            assert moved.status_code == 201, moved.text
        output = server.output()
        assert "unhandled error" not in output, output[-3000:]

"""Read replicas with read-your-writes, on a real streaming replica of the throwaway cluster that
applies what the primary writes APPLY_DELAY_MS later (`tests.fixtures.replica`).

- Reads go to the replica: a row committed on the primary is not seen at once by a client that
  wrote nothing (it reads the lagging replica).
- A client's own write is visible on its very next read, over many write-then-read cycles: the
  answer to a write carries the primary's WAL position (`X-Consistent-After` and a cookie), and
  a read that sends it back reads a replica only once it has replayed that far.
- A replica that is down takes no reads: the primary serves them, no 5xx.
"""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from sqlalchemy import insert

from asyncblog.config import Settings
from asyncblog.db import consistency
from asyncblog.models import User
from tests.fixtures.databases import settings_for
from tests.fixtures.faults import members
from tests.fixtures.metrics import counted
from tests.fixtures.replica import APPLY_DELAY_MS, Replica
from tests.fixtures.servers import in_process_app


def replicated(replica: Replica, **overrides: object) -> Settings:
    """The app with the replica; no lag bound unless given, so that the tests can watch it
    serve its lagging state (a replica just started has replayed no transaction yet: its lag
    is unknown, and a bound would keep it out)."""
    values: dict[str, object] = {"replica_max_lag_seconds": 0, **overrides}
    return settings_for(
        replica.primary.url,
        database_replica_urls=replica.url.render_as_string(hide_password=False),
        **values,
    )


async def committed_user(replica: Replica, name: str) -> int:
    """A user committed on the primary directly (the replica applies it later)."""
    async with replica.primary.engine.begin() as conn:
        created = await conn.execute(
            insert(User)
            .values(username=name, email=f"{name}@example.com", hashed_password="x")
            .returning(User.id)
        )
        return int(created.scalar_one())


async def received_not_replayed(replica: Replica) -> None:
    """Until the replica received everything the primary wrote (the throwaway cluster commits
    asynchronously: it may not have sent it yet), which it applies APPLY_DELAY_MS later."""
    primary = await asyncpg.connect(replica.primary.cluster.dsn(replica.database))
    standby = await asyncpg.connect(replica.dsn())
    try:
        target = await primary.fetchval("SELECT pg_current_wal_insert_lsn()")
        await primary.execute("SELECT pg_switch_wal()")  # flush and send what is written
        for _ in range(100):
            if await standby.fetchval("SELECT pg_last_wal_receive_lsn() >= $1", target):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the replica did not receive the write")
    finally:
        await primary.close()
        await standby.close()


def reads(outcome: str) -> float:
    return counted("asyncblog_replica_reads_total", outcome=outcome)


def wait_count(outcome: str) -> float:
    return counted("asyncblog_replica_wait_seconds_count", outcome=outcome)


def wait_sum(outcome: str) -> float:
    return counted("asyncblog_replica_wait_seconds_sum", outcome=outcome)


async def test_a_client_that_wrote_nothing_reads_the_lagging_replica(pg_replica: Replica) -> None:
    async with in_process_app(replicated(pg_replica)) as api:
        user_id = await committed_user(pg_replica, "behind")
        before = reads("replica")
        response = await api.client.get(f"/users/{user_id}")
        assert response.status_code == 404, "read from the primary, not the replica"
        assert reads("replica") - before == 1
        assert "x-consistent-after" not in response.headers  # a read notes no position
        # Once the replica has applied it, the same read finds it there.
        for _ in range(int(APPLY_DELAY_MS / 100) + 50):
            if (await api.client.get(f"/users/{user_id}")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the replica never caught up")


@pytest.mark.parametrize("synchronous_commit", ["off", "on"])
async def test_a_clients_own_write_is_visible_on_its_next_read(
    pg_replica: Replica, synchronous_commit: str
) -> None:
    """Twenty write-then-read cycles, each read right after its write: zero stale reads. The
    replica lags 1.5 s, so each read either waited for it or went to the primary; another
    client, with no position, may still read the replica's older state. Whether commits wait
    for the WAL flush (on) or not (off), the position answered holds the write."""
    await pg_replica.primary.set_default("synchronous_commit", synchronous_commit)
    async with in_process_app(replicated(pg_replica)) as api:
        body = {"username": "writer", "email": "writer@example.com", "password": "password123"}
        registered = await api.client.post("/users", json=body)
        assert registered.status_code == 201, registered.text
        position = registered.headers["x-consistent-after"]
        assert consistency.parse(position) is not None
        assert "asyncblog_lsn=" in registered.headers["set-cookie"]
        token = (
            await api.client.post(
                "/auth/token", data={"username": "writer", "password": "password123"}
            )
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        stale = 0
        for n in range(20):
            title = f"post {n}"
            created = await api.client.post(
                "/posts", json={"title": title, "content": "c"}, headers=auth
            )
            assert created.status_code == 201, created.text
            post_id = created.json()["id"]
            shown = await api.client.get(f"/posts/{post_id}")  # the cookie travels
            stale += shown.status_code != 200
        assert stale == 0
        # A client without the cookie or the header reads the replica, which lags behind.
        async with httpx.AsyncClient(
            transport=api.client._transport, base_url="http://test"
        ) as other:
            newest = await other.get(f"/posts/{post_id}")
        assert newest.status_code == 404


async def test_the_header_alone_is_enough(pg_replica: Replica) -> None:
    """A client that keeps no cookies sends the position back as X-Consistent-After. The replica
    lags 1.5 s, more than REPLICA_WAIT_MS (100 ms): the read waits that long, measured in
    `asyncblog_replica_wait_seconds`, then reads the primary (0.5 s of slack for a busy box)."""
    async with in_process_app(replicated(pg_replica)) as api:
        body = {"username": "nocookie", "email": "nc@example.com", "password": "password123"}
        registered = await api.client.post("/users", json=body)
        api.client.cookies.clear()
        user_id = registered.json()["id"]
        position = registered.headers["x-consistent-after"]
        waited, primary = reads("waited"), reads("primary")
        waits, waiting = wait_count("primary"), wait_sum("primary")
        shown = await api.client.get(f"/users/{user_id}", headers={"X-Consistent-After": position})
        assert shown.status_code == 200
        assert reads("waited") - waited == 0
        assert reads("primary") - primary == 1
        assert wait_count("primary") - waits == 1
        assert 0.1 <= wait_sum("primary") - waiting <= 0.1 + 0.5
        without = await api.client.get(f"/users/{user_id}")
        assert without.status_code == 404  # no position: the lagging replica


async def test_a_read_waits_for_the_replica_within_its_bound(pg_replica: Replica) -> None:
    """REPLICA_WAIT_MS (3 s) above the replica's delay (1.5 s): the read after a write waits for
    the replica to replay it and reads there (`waited`), after about the delay, not the bound."""
    async with in_process_app(replicated(pg_replica, replica_wait_ms=3000)) as api:
        body = {"username": "patient", "email": "patient@example.com", "password": "password123"}
        registered = await api.client.post("/users", json=body)
        user_id = registered.json()["id"]
        waited, primary = reads("waited"), reads("primary")
        waits, waiting = wait_count("waited"), wait_sum("waited")
        shown = await api.client.get(f"/users/{user_id}")  # the cookie travels
        assert shown.status_code == 200
        assert reads("waited") - waited == 1
        assert reads("primary") - primary == 0
        assert wait_count("waited") - waits == 1
        assert 0 < wait_sum("waited") - waiting <= APPLY_DELAY_MS / 1000 + 0.5


async def test_a_replica_that_is_down_takes_no_reads(pg_replica: Replica) -> None:
    async with in_process_app(replicated(pg_replica)) as api:
        body = {"username": "survivor", "email": "s@example.com", "password": "password123"}
        registered = await api.client.post("/users", json=body)
        user_id = registered.json()["id"]
        await asyncio.sleep(APPLY_DELAY_MS / 1000 + 0.5)  # the replica has it
        api.client.cookies.clear()
        assert (await api.client.get(f"/users/{user_id}")).status_code == 200
        await pg_replica.stop()
        statuses = [(await api.client.get(f"/users/{user_id}")).status_code for _ in range(10)]
        assert statuses == [200] * 10


async def test_the_furthest_position_a_client_sends_counts(pg_replica: Replica) -> None:
    """A cookie jar may hold an old position beside the newest (or a header beside a cookie):
    the furthest one is required."""
    async with in_process_app(replicated(pg_replica)) as api:
        body = {"username": "twice", "email": "twice@example.com", "password": "password123"}
        registered = await api.client.post("/users", json=body)
        user_id = registered.json()["id"]
        newest = registered.headers["x-consistent-after"]
        api.client.cookies.clear()
        cookie = f"asyncblog_lsn=0/1; asyncblog_lsn={newest}"
        shown = await api.client.get(f"/users/{user_id}", headers={"Cookie": cookie})
        assert shown.status_code == 200
        mixed = await api.client.get(
            f"/users/{user_id}",
            headers={"Cookie": f"asyncblog_lsn={newest}", "X-Consistent-After": "0/1"},
        )
        assert mixed.status_code == 200


async def test_a_lagging_replica_takes_no_reads_and_readyz_reports_each(
    pg_replica: Replica,
) -> None:
    """REPLICA_MAX_LAG_SECONDS below the replica's delay: right after a write on the primary it
    is lagging, so even a client with no position reads the primary; /readyz says `lagging`,
    then `ok` once it caught up, then `down` when it is stopped, and stays 200 throughout."""
    where = f"127.0.0.1:{pg_replica.port}"
    settings = replicated(pg_replica, replica_max_lag_seconds=0.3)
    async with in_process_app(settings) as api:
        user_id = await committed_user(pg_replica, "fresh")
        await received_not_replayed(pg_replica)
        primary = reads("primary")
        assert (await api.client.get(f"/users/{user_id}")).status_code == 200
        assert reads("primary") - primary == 1
        ready = await api.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "database": "ok", "replicas": {where: "lagging"}}
        for _ in range(int(APPLY_DELAY_MS / 100) + 50):  # it replays the write
            ready = await api.client.get("/readyz")
            if ready.json()["replicas"][where] == "ok":
                break
            await asyncio.sleep(0.1)
        assert ready.json()["replicas"] == {where: "ok"}
        await pg_replica.stop()
        ready = await api.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "database": "ok", "replicas": {where: "down"}}


async def test_a_bulk_import_is_visible_on_the_admins_next_read(pg_replica: Replica) -> None:
    """The ORM's bulk operations note the position too: the admin's next read finds the users
    it just created, although the replica lags."""
    async with in_process_app(replicated(pg_replica)) as api:
        admin, _ = await members(api.client, pg_replica.primary.engine, 0)
        users = [{"username": "bulk_seen", "email": "bs@example.com", "password": "password123"}]
        created = await api.client.post("/users/bulk", json={"users": users}, headers=admin)
        assert created.status_code == 201, created.text
        assert "x-consistent-after" in created.headers
        user_id = created.json()["created"][0]["id"]
        assert (await api.client.get(f"/users/{user_id}")).status_code == 200  # the cookie


async def test_a_fresh_token_works_from_a_new_client(pg_replica: Replica) -> None:
    """A token carries the position of the login that issued it: a client that never saw the
    cookie (another process of the same app, a mobile client handed the token) is not told by
    the lagging replica that its account does not exist."""
    async with in_process_app(replicated(pg_replica)) as api:
        body = {"username": "handed", "email": "handed@example.com", "password": "password123"}
        assert (await api.client.post("/users", json=body)).status_code == 201
        form = {"username": "handed", "password": "password123"}
        token = (await api.client.post("/auth/token", data=form)).json()["access_token"]
        async with httpx.AsyncClient(
            transport=api.client._transport, base_url="http://test"
        ) as other:  # no cookie, no header: only the token
            me = await other.get("/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "handed"

"""Abuse sent all at once, on the real pool (`live_state`): the limits hold under concurrency.

- 500 wrong-password logins at once for one username from one address: the attempt is counted
  before the hash, so exactly `LOGIN_MAX_FAILURES` passwords are checked; the rest get 429.
- 500 registrations at once with a taken email: refused before any hashing (409), and a login
  sent meanwhile is answered.
- More hashes waiting than `PASSWORD_HASH_MAX_WAITING`: 503 with Retry-After at once, and nothing
  half-written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from asyncblog.security import PasswordHasher
from tests.fixtures.app import Api
from tests.fixtures.databases import unavailable

pytestmark = pytest.mark.concurrency

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PASSWORD = "password123"


class CountingHasher(PasswordHasher):
    """The real hasher (it does the work), counting the Argon2 runs it was asked for."""

    hashes = 0
    verifies = 0

    async def hash(self, password: str) -> str:
        self.hashes += 1
        return await super().hash(password)

    async def verify(self, password: str, hashed: str | None) -> bool:
        self.verifies += 1
        return await super().verify(password, hashed)


@dataclasses.dataclass
class Counted:
    api: Api
    hasher: CountingHasher


@pytest.fixture(params=["memory", "redis", "database"])
async def counted(request: pytest.FixtureRequest, live_state: AppState) -> AsyncIterator[Counted]:
    overrides: dict[str, Any] = {"register_max_per_minute": 0}
    if request.param == "redis":
        probe = Redis.from_url(REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            await probe.ping()
        except Exception as exc:
            unavailable(f"Redis at {REDIS_URL}", f"{type(exc).__name__}: {exc}")
        finally:
            await probe.aclose()
        overrides["redis_url"] = REDIS_URL
    if request.param == "database":
        overrides["throttle_store"] = "database"
    settings = live_state.settings.model_copy(update=overrides)
    hasher = CountingHasher(settings)
    state = dataclasses.replace(AppState.build(settings, live_state.db), hasher=hasher)
    # An address of this test's own: Redis keeps counts across tests and runs (no flush, so
    # that runs side by side do not wipe each other's).
    address = f"fd00:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}::1"
    transport = httpx.ASGITransport(
        app=create_app(state=state), raise_app_exceptions=False, client=(address, 40000)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as c:
        try:
            yield Counted(Api(c, state), hasher)
        finally:
            await state.throttle.close()


async def test_of_500_wrong_passwords_at_once_only_the_limit_are_checked(
    counted: Counted,
) -> None:
    api, hasher = counted.api, counted.hasher
    user = await api.register()
    hasher.verifies = 0
    limit = api.state.settings.login_max_failures

    responses = await asyncio.gather(
        *(
            api.client.post(
                "/auth/token", data={"username": user["username"], "password": "wrong-password"}
            )
            for _ in range(500)
        )
    )

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {401: limit, 429: 500 - limit}, statuses
    assert hasher.verifies == limit
    assert all(r.headers["retry-after"].isdigit() for r in responses if r.status_code == 429)


async def test_500_registrations_with_a_taken_email_hash_nothing_and_logins_go_on(
    counted: Counted,
) -> None:
    api, hasher = counted.api, counted.hasher
    owner = await api.register()
    other = await api.register()
    hasher.hashes = hasher.verifies = 0

    async def register(n: int) -> httpx.Response:
        body = {"username": f"flood{n}", "email": owner["email"], "password": PASSWORD}
        return await api.client.post("/users", json=body)

    flood = asyncio.gather(*(register(n) for n in range(500)))
    login = api.client.post(
        "/auth/token", data={"username": other["username"], "password": PASSWORD}
    )
    responses, logged_in = await asyncio.gather(flood, login)

    assert logged_in.status_code == 200, logged_in.text
    assert Counter(r.status_code for r in responses) == {409: 500}
    assert all(r.json() == {"detail": "Email already registered"} for r in responses)
    assert hasher.hashes == 0  # "a handful" at most; visibly taken: none
    assert hasher.verifies == 1  # the login's


async def test_past_the_hash_queue_bound_registrations_get_503_at_once(
    counted: Counted, live_state: AppState
) -> None:
    api = counted.api
    settings = api.state.settings.model_copy(
        # hashes slower than the uniqueness checks before them, so that they pile up
        update={
            "password_hash_threads": 1,
            "password_hash_max_waiting": 2,
            "argon2_time_cost": 2,
            "argon2_memory_cost_kib": 16384,
        }
    )
    api.state.hasher = CountingHasher(settings)
    bodies = [
        {"username": f"queued{n}", "email": f"queued{n}@example.com", "password": PASSWORD}
        for n in range(20)
    ]
    responses = await asyncio.gather(*(api.client.post("/users", json=b) for b in bodies))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {201, 503}, statuses
    assert 3 <= statuses[201] < 20, statuses  # one hashing, two waiting, then more as they end
    for body, response in zip(bodies, responses, strict=True):
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert response.json() == {"detail": "Too many password checks at once; retry shortly"}
            # nothing half-written: that user does not exist
            login = await api.client.post(
                "/auth/token", data={"username": body["username"], "password": PASSWORD}
            )
            assert login.status_code == 401

"""GET /metrics in one process, on every backend: off unless METRICS=true, behind METRICS_TOKEN
when set, and the numbers it shows follow the requests made (the many-worker sums are in
tests/test_metrics.py).

The metrics are the process's (prometheus-client's registry): each test compares a scrape
after its requests with one before them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from asyncblog.api.app import create_app
from asyncblog.api.state import AppState
from tests.fixtures.app import Api, client_of
from tests.fixtures.metrics import Scrape, counted, scrape

USER_ROUTE = "/users/{user_id}"


@asynccontextmanager
async def metered(state: AppState, **settings: Any) -> AsyncIterator[Api]:
    """The test's app (same database, same outer transaction) with METRICS=true."""
    changed = state.settings.model_copy(update={"metrics": True, **settings})
    app = create_app(state=AppState.build(changed, state.db))
    async with client_of(app) as client:
        yield Api(client, state)


async def test_metrics_are_off_unless_asked_for(client: httpx.AsyncClient) -> None:
    """Off: no /metrics, and requests are not measured (this process's request counter for the
    route does not move, as it does when on: the next test)."""
    before = counted("http_requests_total", method="GET", route="/users/count", status="200")
    assert (await client.get("/users/count")).status_code == 200
    after = counted("http_requests_total", method="GET", route="/users/count", status="200")
    assert after == before
    response = await client.get("/metrics")
    assert response.status_code == 404
    spec = (await client.get("/openapi.json")).json()
    assert "/metrics" not in spec["paths"]


async def test_requests_are_counted_by_method_route_template_and_status(state: AppState) -> None:
    async with metered(state) as api:
        user = await api.register()
        before = await scrape(api.client)
        for _ in range(3):
            assert (await api.client.get(f"/users/{user['id']}")).status_code == 200
        assert (await api.client.get("/users/987654321")).status_code == 404
        assert (await api.client.get("/no/such/path")).status_code == 404
        assert (await api.client.delete("/healthz")).status_code == 405
        after = await scrape(api.client)

    def requests(route: str, status: str, method: str = "GET") -> float:
        labels = {"method": method, "route": route, "status": status}
        return after.delta(before, "http_requests_total", **labels)

    assert requests(USER_ROUTE, "200") == 3  # the template, not /users/1, /users/2, ...
    assert requests(USER_ROUTE, "404") == 1
    assert requests("unmatched", "404") == 1
    assert requests("/healthz", "405", method="DELETE") == 1
    assert requests("/metrics", "200") == 1  # the scrape before counts; the one after not yet
    # one latency observation per request, with the route's requests of every status
    observed = after.delta(
        before, "http_request_duration_seconds_count", method="GET", route=USER_ROUTE
    )
    assert observed == 4
    assert after.value("http_request_duration_seconds_sum", method="GET", route=USER_ROUTE) > 0
    assert after.value("http_requests_in_flight") == 1  # the scrape itself


async def test_an_unknown_method_is_counted_as_other(state: AppState) -> None:
    async with metered(state) as api:
        before = await scrape(api.client)
        response = await api.client.request("BREW", "/healthz")
        assert response.status_code == 405
        after = await scrape(api.client)
    assert after.delta(before, "http_requests_total", method="OTHER", route="/healthz") == 1
    assert "BREW" not in after.text


async def test_a_token_guards_the_metrics_when_set(state: AppState) -> None:
    token = "scrape-token-0123456789abcdef"
    async with metered(state, metrics_token=SecretStr(token)) as api:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            refused = await api.client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "http_requests_total" not in refused.text
        allowed = await api.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200
        assert allowed.headers["content-type"].startswith("text/plain; version=")
        assert allowed.headers["cache-control"] == "no-store"
        assert "http_requests_total" in allowed.text


async def test_openmetrics_when_the_scraper_asks_for_it(state: AppState) -> None:
    async with metered(state) as api:
        accept = "application/openmetrics-text; version=1.0.0"
        response = await api.client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_with_a_metrics_port_the_api_port_does_not_answer_them(state: AppState) -> None:
    async with metered(state, metrics_port=9999) as api:
        assert (await api.client.get("/metrics")).status_code == 404


async def test_logins_are_counted_by_outcome(state: AppState) -> None:
    async with metered(state, login_max_failures=2) as api:
        user = await api.register()
        before = await scrape(api.client)
        await api.login(user["username"])
        form = {"username": user["username"], "password": "wrong-password"}
        statuses = [(await api.client.post("/auth/token", data=form)).status_code for _ in "abc"]
        assert statuses == [401, 401, 429]
        after = await scrape(api.client)
    assert after.delta(before, "asyncblog_logins_total", outcome="ok") == 1
    assert after.delta(before, "asyncblog_logins_total", outcome="failed") == 2
    assert after.delta(before, "asyncblog_logins_total", outcome="throttled") == 1


async def test_transfers_are_counted_by_outcome(state: AppState) -> None:
    async with metered(state) as api:
        _, admin = await api.admin()
        sender, auth = await api.user()
        recipient = await api.register()
        await api.deposit(admin, sender["id"], "10.00")
        before = await scrape(api.client)

        async def send(amount: str, key: str | None = None) -> int:
            headers = {**auth, **({"Idempotency-Key": key} if key else {})}
            body = {"to_user_id": recipient["id"], "amount": amount}
            return (await api.client.post("/transfers", json=body, headers=headers)).status_code

        assert await send("4.00") == 201
        assert await send("1.00", key="order-1") == 201
        assert await send("1.00", key="order-1") == 201  # replayed
        assert await send("50.00") == 409  # insufficient balance
        after = await scrape(api.client)

    def outcome(name: str) -> float:
        return after.delta(before, "asyncblog_transfers_total", outcome=name)

    assert (outcome("created"), outcome("replayed"), outcome("insufficient_balance")) == (2, 1, 1)
    assert (outcome("retried"), outcome("given_up")) == (0, 0)


async def test_the_gate_and_the_pool_are_sampled_at_each_scrape(state: AppState) -> None:
    async with metered(state) as api:
        first = await scrape(api.client)
        size = state.db.admission.capacity
        assert first.value("asyncblog_db_gate_slots") == size
        assert first.value("asyncblog_db_gate_waiting") == 0
        # Another task holds every slot: the scrape sees them in use.
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold(n: int) -> None:
            async with state.db.slot():
                if n == 0:
                    holding.set()
                await release.wait()

        holders = [asyncio.create_task(hold(n)) for n in range(state.db.admission.size)]
        try:
            await holding.wait()
            await asyncio.sleep(0)  # the other holders take theirs
            held = await scrape(api.client)
        finally:
            release.set()
            await asyncio.gather(*holders)
        assert held.value("asyncblog_db_gate_slots_in_use") == state.db.admission.size
        busy = held.value("asyncblog_db_pool_connections", state="busy")
        idle = held.value("asyncblog_db_pool_connections", state="idle")
        assert busy >= 0 and idle >= 0
        after = await scrape(api.client)
        assert after.value("asyncblog_db_gate_slots_in_use") == 0


@pytest.mark.parametrize("kind", ["unavailable", "timed_out", "busy"])
async def test_every_database_error_kind_is_shown_from_the_start(
    state: AppState, kind: str
) -> None:
    async with metered(state) as api:
        shown: Scrape = await scrape(api.client)
    assert shown.has("asyncblog_db_errors_total", kind=kind)

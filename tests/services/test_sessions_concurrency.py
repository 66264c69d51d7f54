"""Refresh-token rotation under real concurrency (`live_api`: a real pool, real commits): of
refreshes sent at once with one token, at most one gets a new pair, and the others, being a
spent token presented again, end the login."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.fixtures.app import Api

pytestmark = pytest.mark.concurrency

RACERS = 10


async def test_of_refreshes_at_once_with_one_token_at_most_one_wins(live_api: Api) -> None:
    user = await live_api.register()
    for _ in range(3):
        token = await live_api.client.post(
            "/auth/token", data={"username": user["username"], "password": "password123"}
        )
        refresh_token = token.json()["refresh_token"]
        responses = await asyncio.gather(
            *(
                live_api.client.post("/auth/refresh", json={"refresh_token": refresh_token})
                for _ in range(RACERS)
            )
        )
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 401}, [r.text for r in responses]
        assert statuses[200] <= 1, statuses
        assert statuses[401] >= RACERS - 1
        winner = next((r for r in responses if r.status_code == 200), None)
        if winner is not None:
            # the losers presented a spent token: the login ended, the winner's new token too
            after = await live_api.client.post(
                "/auth/refresh", json={"refresh_token": winner.json()["refresh_token"]}
            )
            assert after.status_code == 401

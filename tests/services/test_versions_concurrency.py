"""Versions and deletions under real concurrency (`live_api`: a real pool, real commits).

- Of PATCHes sent at once with the same If-Match, exactly one is made.
- A transfer racing a PATCH with If-Match: the PATCH lands before it (200) or is refused (412);
  the money is never lost and the version counts every change.
- A deletion racing transfers into the user: either the user goes with nothing received
  (every transfer 404), or money arrived first and the deletion is refused (409).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest

from tests.fixtures.app import Api
from tests.fixtures.contract import CHANGED
from tests.fixtures.faults import Member, transfer_call
from tests.fixtures.faults import funded as members
from tests.fixtures.ledger import assert_ledger_invariants

pytestmark = pytest.mark.concurrency

ROUNDS = 4
RACERS = 6


async def test_of_patches_with_one_if_match_exactly_one_is_made(live_api: Api) -> None:
    user, headers = await live_api.user()
    post = await live_api.client.post(
        "/posts", json={"title": "t0", "content": "c"}, headers=headers
    )
    assert post.status_code == 201
    targets: dict[str, Callable[[int, int], dict[str, str]]] = {
        f"/users/{user['id']}": lambda i, r: {"username": f"racer_{r}_{i}"},
        f"/posts/{post.json()['id']}": lambda i, r: {"title": f"title {r} {i}"},
    }
    for path, change in targets.items():
        version = 1
        for r in range(ROUNDS):
            match = {"If-Match": f'"{version}"'}
            responses = await asyncio.gather(
                *(
                    live_api.client.patch(path, json=change(i, r), headers=headers | match)
                    for i in range(RACERS)
                )
            )
            statuses = Counter(response.status_code for response in responses)
            assert statuses == {200: 1, 412: RACERS - 1}, (path, r, statuses)
            assert all(x.json() == CHANGED for x in responses if x.status_code == 412)
            winner = next(x for x in responses if x.status_code == 200)
            version += 1
            assert winner.json()["version"] == version
            assert winner.headers["etag"] == f'"{version}"'
            field, value = next(iter(change(responses.index(winner), r).items()))
            assert winner.json()[field] == value


async def test_a_transfer_racing_a_patch_is_never_lost(live_api: Api) -> None:
    _, (payer, payee) = await members(live_api, 2, "100.00")
    payee_headers = payee.headers
    for r in range(ROUNDS):
        me = await live_api.client.get("/users/me", headers=payee_headers)
        version, balance = me.json()["version"], Decimal(me.json()["balance"])
        patch = live_api.client.patch(
            f"/users/{payee.id}",
            json={"username": f"payee_{r}"},
            headers=payee_headers | {"If-Match": f'"{version}"'},
        )
        transfers = [transfer_call(live_api, payer, payee, Decimal("1.00"))() for _ in range(3)]
        edited, *paid = await asyncio.gather(patch, *transfers)

        assert [x.status_code for x in paid] == [201] * 3, [x.text for x in paid]
        assert edited.status_code in (200, 412), edited.text
        after = (await live_api.client.get("/users/me", headers=payee_headers)).json()
        assert Decimal(after["balance"]) == balance + 3
        assert after["version"] == version + 3 + (edited.status_code == 200)
        if edited.status_code == 200:  # it landed first: it saw none of the money yet
            assert edited.json()["version"] == version + 1
            assert Decimal(edited.json()["balance"]) == balance
            assert after["username"] == f"payee_{r}"
        else:
            assert edited.json() == CHANGED
    await assert_ledger_invariants(live_api.state)


async def test_a_deletion_racing_payments_never_loses_them(live_api: Api) -> None:
    _, (payer,) = await members(live_api, 1, "100.00")
    outcomes: Counter[int] = Counter()
    for r in range(ROUNDS * 2):
        payee, payee_headers = await live_api.user()
        target = Member(payee["id"], payee["username"], payee_headers)
        deletion = live_api.client.delete(f"/users/{payee['id']}", headers=payee_headers)
        payments = [transfer_call(live_api, payer, target, Decimal("0.50"))() for _ in range(3)]
        deleted, *paid = await asyncio.gather(deletion, *payments)

        statuses = [x.status_code for x in paid]
        assert set(statuses) <= {201, 404}, [x.text for x in paid]
        if deleted.status_code == 204:
            # gone before any money arrived: every payment found no recipient
            assert statuses == [404] * 3, (r, statuses)
            gone = await live_api.client.get(f"/users/{payee['id']}")
            assert gone.status_code == 404
        else:
            assert deleted.status_code == 409, deleted.text
            received = statuses.count(201)
            assert received >= 1 and 404 not in statuses, (r, statuses)
            me = await live_api.client.get("/users/me", headers=payee_headers)
            assert Decimal(me.json()["balance"]) == Decimal("0.50") * received
        outcomes[deleted.status_code] += 1
    report = await assert_ledger_invariants(live_api.state)
    assert report.total_balances == report.total_deposits
    assert sum(outcomes.values()) == ROUNDS * 2

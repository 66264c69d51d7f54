"""Money over HTTP: deposits, transfers, the ledger, Idempotency-Key, and the invariants.

The ledger invariants (API.md, "Invariants") are checked with SQL by
`tests.fixtures.ledger.assert_ledger_invariants`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from asyncblog.models import User
from tests.fixtures.app import Api
from tests.fixtures.ledger import ZERO, assert_ledger_invariants

MONEY_KEYS = {"id", "from_user_id", "to_user_id", "amount", "created_at"}


# --------------------------------------------------------------------------- helpers


async def balance_of(api: Api, headers: dict[str, str]) -> str:
    response = await api.client.get("/users/me", headers=headers)
    assert response.status_code == 200, response.text
    value: str = response.json()["balance"]
    return value


async def send(
    api: Api,
    headers: dict[str, str],
    to_user_id: int,
    amount: Any,
    key: str | None = None,
) -> Any:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return await api.client.post(
        "/transfers", json={"to_user_id": to_user_id, "amount": amount}, headers=headers | extra
    )


async def history(api: Api, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await api.client.get("/transfers", params=params, headers=headers)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def assert_aware_timestamp(value: str) -> None:
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, value


async def funded_pair(
    api: Api, amount: str = "100.00"
) -> tuple[dict[str, str], dict[str, Any], dict[str, str], dict[str, Any], dict[str, str]]:
    """An admin's headers, a sender funded with `amount`, and a recipient with nothing."""
    _, admin = await api.admin()
    sender, sender_h = await api.user()
    recipient, recipient_h = await api.user()
    await api.deposit(admin, sender["id"], amount)
    return admin, sender, sender_h, recipient, recipient_h


# --------------------------------------------------------------------------- deposits


async def test_deposit_by_admin_credits_the_user_and_writes_a_ledger_row(api: Api) -> None:
    _, admin = await api.admin()
    user, headers = await api.user()

    response = await api.client.post(
        f"/admin/users/{user['id']}/deposit", json={"amount": "100.50"}, headers=admin
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == MONEY_KEYS
    assert isinstance(body["id"], int) and body["id"] > 0
    assert body["from_user_id"] is None
    assert body["to_user_id"] == user["id"]
    assert body["amount"] == "100.50"
    assert_aware_timestamp(body["created_at"])
    assert await balance_of(api, headers) == "100.50"

    await api.deposit(admin, user["id"], "0.50")
    assert await balance_of(api, headers) == "101.00"
    assert [row["amount"] for row in await history(api, headers)] == ["100.50", "0.50"]
    await assert_ledger_invariants(api.state)


async def test_deposit_requires_an_admin(api: Api) -> None:
    user, headers = await api.user()
    url = f"/admin/users/{user['id']}/deposit"

    forbidden = await api.client.post(url, json={"amount": "5.00"}, headers=headers)
    anonymous = await api.client.post(url, json={"amount": "5.00"})

    assert forbidden.status_code == 403, forbidden.text
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers.get("www-authenticate") == "Bearer"
    assert await balance_of(api, headers) == "0.00"
    assert await history(api, headers) == []


async def test_deposit_to_a_missing_user_is_404(api: Api) -> None:
    _, admin = await api.admin()
    gone, _ = await api.user()
    assert (await api.client.delete(f"/users/{gone['id']}", headers=admin)).status_code == 204

    for user_id in (gone["id"], gone["id"] + 1000, 2_147_483_647):
        response = await api.client.post(
            f"/admin/users/{user_id}/deposit", json={"amount": "5.00"}, headers=admin
        )
        assert response.status_code == 404, (user_id, response.text)
    report = await assert_ledger_invariants(api.state)
    assert report.total_deposits == ZERO


# Raw JSON texts of `amount`, so that 1e400 and a bare NaN reach the server as sent.
INVALID_AMOUNTS = [
    "0",
    "-1",
    '"0.00"',
    '"-5.00"',
    '"1.001"',
    "0.001",
    '"abc"',
    '""',
    '"NaN"',
    "NaN",
    '"Infinity"',
    '"-Infinity"',
    "1000000000.01",
    '"1000000000.01"',
    "1e400",
    "null",
    "[]",
]


@pytest.mark.parametrize("raw", INVALID_AMOUNTS)
async def test_invalid_amounts_are_422_and_move_nothing(api: Api, raw: str) -> None:
    admin, _, sender_h, recipient, _ = await funded_pair(api)
    json_headers = {"Content-Type": "application/json"}

    deposit = await api.client.post(
        f"/admin/users/{recipient['id']}/deposit",
        content=f'{{"amount": {raw}}}',
        headers=admin | json_headers,
    )
    transfer = await api.client.post(
        "/transfers",
        content=f'{{"to_user_id": {recipient["id"]}, "amount": {raw}}}',
        headers=sender_h | json_headers,
    )

    assert (deposit.status_code, transfer.status_code) == (422, 422), (deposit.text, transfer.text)
    assert isinstance(transfer.json()["detail"], list)  # FastAPI's validation shape
    assert await balance_of(api, sender_h) == "100.00"
    report = await assert_ledger_invariants(api.state)
    assert report.rows[recipient["id"]].balance == ZERO
    assert report.transfer_rows == 0


@pytest.mark.parametrize(
    ("amount", "stored"),
    [("1000000000.00", "1000000000.00"), (12.5, "12.50"), ("7", "7.00"), (0.01, "0.01")],
)
async def test_valid_amounts_are_accepted_as_strings_or_numbers(
    api: Api, amount: Any, stored: str
) -> None:
    _, admin = await api.admin()
    user, headers = await api.user()

    response = await api.client.post(
        f"/admin/users/{user['id']}/deposit", json={"amount": amount}, headers=admin
    )

    assert response.status_code == 201, response.text
    assert response.json()["amount"] == stored
    assert await balance_of(api, headers) == stored
    await assert_ledger_invariants(api.state)


# --------------------------------------------------------------------------- transfers


async def test_transfer_moves_money_exactly(api: Api) -> None:
    _, sender, sender_h, recipient, recipient_h = await funded_pair(api, "100.00")

    response = await send(api, sender_h, recipient["id"], "30.25")

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == MONEY_KEYS
    assert body["from_user_id"] == sender["id"]
    assert body["to_user_id"] == recipient["id"]
    assert body["amount"] == "30.25"
    assert_aware_timestamp(body["created_at"])
    assert await balance_of(api, sender_h) == "69.75"
    assert await balance_of(api, recipient_h) == "30.25"

    # A number works too, and the whole balance may be sent.
    assert (await send(api, sender_h, recipient["id"], 0.75)).status_code == 201
    assert (await send(api, sender_h, recipient["id"], "69.00")).status_code == 201
    assert await balance_of(api, sender_h) == "0.00"
    assert await balance_of(api, recipient_h) == "100.00"
    report = await assert_ledger_invariants(api.state)
    assert report.transfer_rows == 3


async def test_insufficient_balance_is_409_and_nothing_moves(api: Api) -> None:
    _, _, sender_h, recipient, recipient_h = await funded_pair(api, "10.00")
    _, broke_h = await api.user()

    over = await send(api, sender_h, recipient["id"], "10.01")
    from_empty = await send(api, broke_h, recipient["id"], "0.01")

    for response in (over, from_empty):
        assert response.status_code == 409, response.text
        assert response.json() == {"detail": "Insufficient balance"}
    assert await balance_of(api, sender_h) == "10.00"
    assert await balance_of(api, recipient_h) == "0.00"
    assert await balance_of(api, broke_h) == "0.00"
    assert [row["from_user_id"] for row in await history(api, sender_h)] == [None]
    report = await assert_ledger_invariants(api.state)
    assert report.transfer_rows == 0


async def test_transfer_to_a_missing_or_inactive_recipient_is_404(api: Api) -> None:
    admin, _, sender_h, recipient, _ = await funded_pair(api)
    deleted, _ = await api.user()
    assert (await api.client.delete(f"/users/{deleted['id']}", headers=admin)).status_code == 204
    deactivated = await api.client.patch(
        f"/users/{recipient['id']}", json={"is_active": False}, headers=admin
    )
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json()["is_active"] is False

    for to_user_id in (recipient["id"], deleted["id"], deleted["id"] + 1000):
        response = await send(api, sender_h, to_user_id, "1.00")
        assert response.status_code == 404, (to_user_id, response.text)
    assert await balance_of(api, sender_h) == "100.00"
    report = await assert_ledger_invariants(api.state)
    assert report.rows[recipient["id"]].balance == ZERO
    assert report.transfer_rows == 0


async def test_transfer_to_oneself_is_422(api: Api) -> None:
    _, sender, sender_h, _, _ = await funded_pair(api)

    response = await send(api, sender_h, sender["id"], "1.00")

    assert response.status_code == 422, response.text
    assert await balance_of(api, sender_h) == "100.00"
    assert (await assert_ledger_invariants(api.state)).transfer_rows == 0


async def test_transfers_need_a_valid_token(api: Api) -> None:
    _, _, _, recipient, _ = await funded_pair(api)
    body = {"to_user_id": recipient["id"], "amount": "1.00"}

    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        posted = await api.client.post("/transfers", json=body, headers=headers)
        listed = await api.client.get("/transfers", headers=headers)
        for response in (posted, listed):
            assert response.status_code == 401, response.text
            assert response.headers.get("www-authenticate") == "Bearer"
    assert (await assert_ledger_invariants(api.state)).transfer_rows == 0


async def test_history_lists_the_callers_sent_received_and_deposits_only(api: Api) -> None:
    _, admin = await api.admin()
    (a, a_h), (b, b_h), (c, c_h) = [await api.user() for _ in range(3)]
    dep_a = (await api.deposit(admin, a["id"], "100.00"))["id"]
    dep_b = (await api.deposit(admin, b["id"], "50.00"))["id"]
    dep_c = (await api.deposit(admin, c["id"], "10.00"))["id"]

    async def ok(headers: dict[str, str], to: int, amount: str) -> int:
        response = await send(api, headers, to, amount)
        assert response.status_code == 201, response.text
        transfer_id: int = response.json()["id"]
        return transfer_id

    a_to_b = await ok(a_h, b["id"], "10.00")
    b_to_c = await ok(b_h, c["id"], "3.00")
    b_to_a = await ok(b_h, a["id"], "5.00")
    c_to_b = await ok(c_h, b["id"], "1.00")
    assert (await send(api, c_h, a["id"], "999.00")).status_code == 409  # not in any list

    rows_a = await history(api, a_h)
    assert [r["id"] for r in rows_a] == [dep_a, a_to_b, b_to_a]
    assert [r["id"] for r in await history(api, b_h)] == [dep_b, a_to_b, b_to_c, b_to_a, c_to_b]
    assert [r["id"] for r in await history(api, c_h)] == [dep_c, b_to_c, c_to_b]
    assert all(set(r) == MONEY_KEYS for r in rows_a)
    assert rows_a[0]["from_user_id"] is None and rows_a[0]["to_user_id"] == a["id"]
    assert (rows_a[1]["from_user_id"], rows_a[1]["to_user_id"], rows_a[1]["amount"]) == (
        a["id"],
        b["id"],
        "10.00",
    )
    assert await balance_of(api, a_h) == "95.00"
    assert await balance_of(api, b_h) == "53.00"
    assert await balance_of(api, c_h) == "12.00"
    await assert_ledger_invariants(api.state)


async def test_history_pagination(api: Api) -> None:
    _, _, sender_h, recipient, _ = await funded_pair(api, "10.00")
    for amount in ("1.00", "2.00", "3.00", "4.00"):
        assert (await send(api, sender_h, recipient["id"], amount)).status_code == 201
    ids = [r["id"] for r in await history(api, sender_h)]
    assert len(ids) == 5 and ids == sorted(ids)

    assert [r["id"] for r in await history(api, sender_h, limit=2)] == ids[:2]
    assert [r["id"] for r in await history(api, sender_h, after_id=ids[1], limit=2)] == ids[2:4]
    assert [r["id"] for r in await history(api, sender_h, after_id=ids[3])] == ids[4:]
    assert await history(api, sender_h, after_id=ids[-1]) == []
    assert [r["id"] for r in await history(api, sender_h, skip=1, limit=3)] == ids[1:4]
    assert await history(api, sender_h, skip=5) == []
    for bad in ({"limit": 0}, {"limit": 101}, {"skip": -1}, {"after_id": -1}):
        response = await api.client.get("/transfers", params=bad, headers=sender_h)
        assert response.status_code == 422, (bad, response.text)


# --------------------------------------------------------------------------- Idempotency-Key


async def test_same_key_same_body_replays_the_first_transfer(api: Api) -> None:
    _, _, sender_h, recipient, recipient_h = await funded_pair(api, "100.00")

    first = await send(api, sender_h, recipient["id"], "25.00", key="order-1")
    again = await send(api, sender_h, recipient["id"], "25.00", key="order-1")
    as_number = await send(api, sender_h, recipient["id"], 25, key="order-1")

    assert first.status_code == 201, first.text
    assert again.status_code == 201, again.text
    assert as_number.status_code == 201, as_number.text
    assert again.json() == first.json()
    assert as_number.json()["id"] == first.json()["id"]
    assert await balance_of(api, sender_h) == "75.00"
    assert await balance_of(api, recipient_h) == "25.00"
    assert (await assert_ledger_invariants(api.state)).transfer_rows == 1

    # Another key is another transfer.
    other = await send(api, sender_h, recipient["id"], "25.00", key="order-2")
    assert other.status_code == 201, other.text
    assert other.json()["id"] != first.json()["id"]
    assert await balance_of(api, sender_h) == "50.00"


async def test_same_key_different_body_is_409_and_moves_nothing(api: Api) -> None:
    _, _, sender_h, recipient, recipient_h = await funded_pair(api, "100.00")
    third, third_h = await api.user()
    assert (await send(api, sender_h, recipient["id"], "10.00", key="k")).status_code == 201

    other_amount = await send(api, sender_h, recipient["id"], "11.00", key="k")
    other_recipient = await send(api, sender_h, third["id"], "10.00", key="k")

    assert other_amount.status_code == 409, other_amount.text
    assert other_recipient.status_code == 409, other_recipient.text
    assert await balance_of(api, sender_h) == "90.00"
    assert await balance_of(api, recipient_h) == "10.00"
    assert await balance_of(api, third_h) == "0.00"
    assert (await assert_ledger_invariants(api.state)).transfer_rows == 1


async def test_the_same_key_from_different_senders_is_independent(api: Api) -> None:
    _, admin = await api.admin()
    (a, a_h), (b, b_h), (c, c_h) = [await api.user() for _ in range(3)]
    await api.deposit(admin, a["id"], "10.00")
    await api.deposit(admin, b["id"], "10.00")

    from_a = await send(api, a_h, c["id"], "4.00", key="shared-key")
    from_b = await send(api, b_h, c["id"], "4.00", key="shared-key")

    assert from_a.status_code == 201, from_a.text
    assert from_b.status_code == 201, from_b.text
    assert from_a.json()["id"] != from_b.json()["id"]
    assert from_b.json()["from_user_id"] == b["id"]
    assert await balance_of(api, a_h) == "6.00"
    assert await balance_of(api, b_h) == "6.00"
    assert await balance_of(api, c_h) == "8.00"
    assert (await assert_ledger_invariants(api.state)).transfer_rows == 2


async def test_keys_differing_only_in_case_are_different_keys(api: Api) -> None:
    """An Idempotency-Key is an opaque string: "Order-7" is not "order-7" (on any database)."""
    _, _, sender_h, recipient, recipient_h = await funded_pair(api, "100.00")

    first = await send(api, sender_h, recipient["id"], "5.00", key="Order-7")
    same_body = await send(api, sender_h, recipient["id"], "5.00", key="order-7")
    other_body = await send(api, sender_h, recipient["id"], "6.00", key="ORDER-7")

    assert [first.status_code, same_body.status_code, other_body.status_code] == [201] * 3, [
        r.text for r in (first, same_body, other_body)
    ]
    assert len({r.json()["id"] for r in (first, same_body, other_body)}) == 3
    assert await balance_of(api, sender_h) == "84.00"
    assert await balance_of(api, recipient_h) == "16.00"
    assert (await assert_ledger_invariants(api.state)).transfer_rows == 3


@pytest.mark.parametrize(("key", "status"), [("k" * 256, 422), ("", 422), ("k" * 255, 201)])
async def test_idempotency_key_length(api: Api, key: str, status: int) -> None:
    _, _, sender_h, recipient, _ = await funded_pair(api, "10.00")

    response = await send(api, sender_h, recipient["id"], "1.00", key=key)

    assert response.status_code == status, response.text
    moved = 1 if status == 201 else 0
    assert await balance_of(api, sender_h) == f"{10 - moved}.00"
    assert (await assert_ledger_invariants(api.state)).transfer_rows == moved


async def test_invariants_hold_after_a_mix_of_operations(api: Api) -> None:
    _, admin = await api.admin()
    users = [await api.user() for _ in range(4)]
    (a, a_h), (b, b_h), (c, c_h), (d, _) = users
    await api.deposit(admin, a["id"], "50.00")
    await api.deposit(admin, b["id"], "20.55")
    await api.deposit(admin, a["id"], "0.45")

    outcomes = [
        (await send(api, a_h, b["id"], "25.50")).status_code,
        (await send(api, b_h, c["id"], "46.05")).status_code,
        (await send(api, b_h, c["id"], "0.01")).status_code,  # b is at 0.00 now
        (await send(api, c_h, d["id"], "46.05", key="x")).status_code,
        (await send(api, c_h, d["id"], "46.05", key="x")).status_code,  # replay
        (await send(api, c_h, a["id"], "0.01")).status_code,
        (await send(api, a_h, a["id"], "1.00")).status_code,
    ]

    assert outcomes == [201, 201, 409, 201, 201, 409, 422]
    report = await assert_ledger_invariants(api.state)
    balances = {user_id: row.balance for user_id, row in report.rows.items()}
    assert [balances[u["id"]] for u, _ in users] == [
        Decimal("24.95"),
        Decimal("0.00"),
        Decimal("0.00"),
        Decimal("46.05"),
    ]
    assert report.total_deposits == Decimal("71.00")
    assert report.transfer_rows == 3


# --------------------------------------------------------------------------- bulk skip (savepoints)


def bulk_entry(username: str, email: str | None = None) -> dict[str, str]:
    return {
        "username": username,
        "email": email or f"{username.lower()}@example.com",
        "password": "password123",
    }


async def test_bulk_skip_creates_the_rest_and_reports_conflicting_indexes(api: Api) -> None:
    _, admin = await api.admin()
    existing = await api.register()
    before = (await api.client.get("/users/count")).json()["count"]
    fresh = [api.unique("bulk") for _ in range(3)]
    entries = [
        bulk_entry(fresh[0]),
        bulk_entry(existing["username"].upper(), "other@example.com"),  # username taken
        bulk_entry(fresh[1]),
        bulk_entry(fresh[2], existing["email"].upper()),  # email taken
        bulk_entry(fresh[1], "again@example.com"),  # repeats index 2's username
    ]

    response = await api.client.post(
        "/users/bulk", json={"users": entries, "on_conflict": "skip"}, headers=admin
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["skipped"] == [1, 3, 4]
    assert [u["username"] for u in body["created"]] == [fresh[0], fresh[1]]
    assert all(u["balance"] == "0.00" and u["is_admin"] is False for u in body["created"])
    assert (await api.client.get("/users/count")).json()["count"] == before + 2
    for user in body["created"]:
        shown = await api.client.get(f"/users/{user['id']}")
        assert shown.status_code == 200 and shown.json()["username"] == user["username"]


async def test_concurrent_bulk_skip_requests_create_each_username_once(live_api: Api) -> None:
    """Requests that pass the conflict check together collide at INSERT time: the loser must
    fall back to one savepoint per row and still answer 201 with created + skipped."""
    admin_user, admin = await live_api.admin()
    shared = [live_api.unique("shared") for _ in range(8)]
    requests: list[list[dict[str, str]]] = []
    for r in range(4):
        names = [name.upper() if r % 2 else name for name in shared]
        names = names[r:] + names[:r]  # each request in its own order
        names.insert(r, live_api.unique(f"own{r}_"))
        requests.append([bulk_entry(name) for name in names])

    responses = await asyncio.gather(
        *(
            live_api.client.post(
                "/users/bulk", json={"users": entries, "on_conflict": "skip"}, headers=admin
            )
            for entries in requests
        )
    )

    assert [r.status_code for r in responses] == [201] * len(requests), [r.text for r in responses]
    created_names: list[str] = []
    for entries, response in zip(requests, responses, strict=True):
        body = response.json()
        by_name = {e["username"]: i for i, e in enumerate(entries)}
        created_indexes = [by_name[u["username"]] for u in body["created"]]
        assert sorted(created_indexes + body["skipped"]) == list(range(len(entries))), body
        created_names += [u["username"].lower() for u in body["created"]]
    wanted = {e["username"].lower() for entries in requests for e in entries}
    assert len(wanted) == len(shared) + len(requests)
    assert sorted(created_names) == sorted(wanted), "each username is created exactly once"
    async with live_api.state.db.session() as session:
        stored = list(await session.scalars(select(func.lower(User.username))))
    assert sorted(stored) == sorted(wanted | {admin_user["username"].lower()})


async def test_an_ended_token_moves_no_money(api: Api) -> None:
    """The transfer's own statement checks the caller's token version and activity (the route
    decodes the token only): a token ended by logout-all, a password change or a deactivation
    is 401, and nothing moves."""
    _, admin = await api.admin()
    recipient = await api.register()
    endings: dict[
        str, Callable[[dict[str, Any], dict[str, str]], Coroutine[Any, Any, httpx.Response]]
    ] = {
        "logout all": lambda user, auth: api.client.post(
            "/auth/logout", json={"all": True}, headers=auth
        ),
        "password change": lambda user, auth: api.client.patch(
            f"/users/{user['id']}",
            json={"password": "another-password-1", "current_password": "password123"},
            headers=auth,
        ),
        "deactivation": lambda user, auth: api.client.patch(
            f"/users/{user['id']}", json={"is_active": False}, headers=admin
        ),
    }
    for what, end in endings.items():
        user, auth = await api.user()
        await api.deposit(admin, user["id"], "10.00")
        ended = await end(user, auth)
        assert ended.status_code in (200, 204), (what, ended.text)
        body = {"to_user_id": recipient["id"], "amount": "1.00"}
        refused = await api.client.post("/transfers", json=body, headers=auth)
        assert refused.status_code == 401, (what, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
        async with api.state.db.session() as session:
            balance = await session.scalar(select(User.balance).where(User.id == user["id"]))
            received = await session.scalar(select(User.balance).where(User.id == recipient["id"]))
        assert (balance, received) == (Decimal("10.00"), ZERO), what
